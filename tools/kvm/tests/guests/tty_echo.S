/* --tty 1: echo ttyS1 back to itself in upper case, by polling its line
 * status, until a newline; then say so on ttyS0 and reset. */
	.code16
	.include "upcase_echo.inc"
	.globl	_start
_start:
	upcase_echo 0x2f8
	mov	$msg, %si
	call	puts
	mov	$0xfe, %al
	out	%al, $0x64
6:	hlt
	jmp	6b

msg:	.asciz	"ttyS1 done\n"

	.include "puts.inc"
