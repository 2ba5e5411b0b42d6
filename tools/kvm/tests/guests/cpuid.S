/* What a guest learns from CPUID about its hypervisor: print 'H' when
 * leaf 1 has the hypervisor bit (ECX[31]), then the 12-byte signature of
 * leaf 0x40000000 (EBX, ECX, EDX), a newline, and reset. */
	.code16
	.globl	_start
_start:
	mov	$1, %eax
	cpuid			/* clobbers %edx: the port comes after */
	mov	$0x3f8, %dx
	mov	$'-', %al
	test	$0x80000000, %ecx
	jz	1f
	mov	$'H', %al
1:	out	%al, %dx
	mov	$0x40000000, %eax
	cpuid
	mov	%ecx, %esi		/* the outs below need %dx for the port */
	mov	%edx, %edi
	mov	$0x3f8, %dx
	mov	%ebx, %eax
	call	put4
	mov	%esi, %eax
	call	put4
	mov	%edi, %eax
	call	put4
	mov	$'\n', %al
	out	%al, %dx
	mov	$0xfe, %al		/* i8042: pulse the reset line */
	out	%al, $0x64
2:	hlt
	jmp	2b

/* The four bytes of %eax, lowest first. */
put4:	mov	$4, %cx
3:	out	%al, %dx
	shr	$8, %eax
	loop	3b
	ret
