/* --tty 1: echo ttyS1 back to itself in upper case, by polling its line
 * status, until a newline; then say so on ttyS0 and reset. */
	.code16
	.globl	_start
_start:
	mov	$0x2f8, %dx
1:	add	$5, %dx			/* LSR */
2:	in	%dx, %al
	test	$0x01, %al		/* data ready */
	jz	2b
	sub	$5, %dx
	in	%dx, %al		/* RBR */
	cmp	$'a', %al
	jb	3f
	cmp	$'z', %al
	ja	3f
	sub	$0x20, %al
3:	out	%al, %dx		/* THR */
	cmp	$'\n', %al
	jne	1b
	mov	$msg, %si
	mov	$0x3f8, %dx
	cld
4:	lodsb
	test	%al, %al
	jz	5f
	out	%al, %dx
	jmp	4b
5:	mov	$0xfe, %al
	out	%al, $0x64
6:	hlt
	jmp	6b

msg:	.asciz	"ttyS1 done\n"
