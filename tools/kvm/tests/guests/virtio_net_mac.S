/* Find every legacy virtio-net on PCI bus 0 through configuration
 * mechanism #1 and print the MAC in each one's config space, in slot
 * order, one line each; '?' if there is none.  The legacy I/O BAR's
 * device config starts at 20 while MSI-X is off, as it stays here.
 * Registers: virtio 0.9.5 legacy PCI layout. */
	.code16
	.globl	_start
	.set	MAC, 20
_start:
	xor	%bx, %bx		/* slot */
	xor	%bp, %bp		/* NICs found */
scan:	call	cfg_addr
	mov	$0xcfc, %dx
	in	%dx, %eax
	cmp	$0x10001af4, %eax	/* virtio legacy net */
	jne	next
	inc	%bp
	call	cfg_addr
	or	$0x10, %al		/* BAR0 */
	mov	$0xcf8, %dx
	out	%eax, %dx
	mov	$0xcfc, %dx
	in	%dx, %eax
	and	$0xfffc, %ax
	add	$MAC, %ax
	mov	%ax, %si		/* the MAC's first port */
	xor	%di, %di
byte:	mov	%si, %dx
	add	%di, %dx
	in	%dx, %al
	mov	%al, %cl
	shr	$4, %al
	call	nibble
	mov	%cl, %al
	call	nibble
	inc	%di
	cmp	$6, %di
	jne	byte
	mov	$'\n', %al
	call	putc
next:	inc	%bx
	cmp	$32, %bx
	jne	scan
	test	%bp, %bp
	jnz	reset
	mov	$'?', %al
	call	putc
reset:	mov	$0xfe, %al
	out	%al, $0x64
1:	hlt
	jmp	1b

cfg_addr:			/* select slot %bx, register 0 */
	movzwl	%bx, %eax
	shl	$11, %eax
	or	$0x80000000, %eax
	mov	$0xcf8, %dx
	out	%eax, %dx
	ret

nibble:	and	$0xf, %al
	add	$'0', %al
	cmp	$'9', %al
	jbe	putc
	add	$('a' - '0' - 10), %al
putc:	mov	$0x3f8, %dx
	out	%al, %dx
	ret
