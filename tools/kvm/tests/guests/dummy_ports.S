/* Touch the legacy ports lkvm claims as no-ops (x86/ioport.py): write each
 * one (kvmtool's debug port 0xe0 among them), write "K" to the SeaBIOS
 * debug port 0x402, then print what port 0x92 reads (the A20 gate, "02")
 * and reset. */
	.code16
	.globl	_start
_start:
	mov	$ports, %si
	cld
1:	lodsw
	test	%ax, %ax
	jz	2f
	mov	%ax, %dx
	out	%al, %dx
	jmp	1b
2:	out	%al, $0x00		/* port 0 ends the table, so write it here */
	mov	$0x402, %dx
	mov	$'K', %al
	out	%al, %dx
	in	$0x92, %al
	mov	%al, %cl
	shr	$4, %al
	call	nibble
	mov	%cl, %al
	call	nibble
	mov	$'\n', %al
	call	putc
	mov	$0xfe, %al		/* i8042: pulse the reset line */
	out	%al, $0x64
3:	hlt
	jmp	3b

nibble:	and	$0x0f, %al
	add	$'0', %al
	cmp	$'9', %al
	jbe	putc
	add	$'a' - '0' - 10, %al
putc:	mov	$0x3f8, %dx
	out	%al, %dx
	ret

ports:	.word	0x1f, 0xc0, 0xdf, 0xe0, 0xed, 0xf1, 0x278, 0x37a, 0x3d4, 0x3d5, 0x510, 0x511, 0
