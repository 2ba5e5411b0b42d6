/* Port-I/O echo: read ttyS0 by polling its line status, write each byte
 * back in upper case, and reset after a newline. */
	.code16
	.globl	_start
_start:
	mov	$0x3f8, %dx
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
	mov	$0xfe, %al
	out	%al, $0x64
4:	hlt
	jmp	4b
