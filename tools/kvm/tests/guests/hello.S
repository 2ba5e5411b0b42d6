/* Print a greeting on ttyS0, then reset through the i8042: the smallest
 * guest that shows output and a clean stop. */
	.code16
	.globl	_start
_start:
	mov	$msg, %si
	call	puts
	mov	$0xfe, %al		/* i8042: pulse the reset line */
	out	%al, $0x64
3:	hlt
	jmp	3b

msg:	.asciz	"Hello, lkvm!\n"

	.include "puts.inc"
