/* Port-I/O echo: read ttyS0 by polling its line status, write each byte
 * back in upper case, and reset after a newline. */
	.code16
	.include "upcase_echo.inc"
	.globl	_start
_start:
	upcase_echo 0x3f8
	mov	$0xfe, %al
	out	%al, $0x64
4:	hlt
	jmp	4b
