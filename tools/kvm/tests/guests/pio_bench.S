/* Port-I/O exits for the benchmark: write a byte to port 0x80 as many
 * times as the 32-bit count at offset 2 says (the bench patches it),
 * then reset. */
	.code16
	.globl	_start
_start:
	jmp	1f
count:	.long	100000
1:	mov	%cs:count, %ecx
2:	out	%al, $0x80
	dec	%ecx
	jnz	2b
	mov	$0xfe, %al
	out	%al, $0x64
3:	hlt
	jmp	3b
