/* Count for ever: %ebx goes up by one per loop and is written to port
 * 0x80 (the POST port, which nobody claims), so every round trips through
 * lkvm's vCPU thread.  A debug dump's rbx shows the progress; a paused
 * guest's rbx stands still.  An NMI prints "NMI\n" on ttyS0 and returns. */
	.code16
	.globl	_start
_start:
	xor	%ax, %ax
	mov	%ax, %es
	movw	$nmi, %es:2*4		/* real-mode IVT entry 2: NMI */
	mov	%cs, %es:2*4+2
	xor	%ebx, %ebx
1:	inc	%ebx
	mov	%ebx, %eax
	out	%eax, $0x80
	jmp	1b

nmi:	push	%ax
	push	%dx
	push	%si
	mov	$msg, %si
	mov	$0x3f8, %dx
2:	mov	%cs:(%si), %al
	test	%al, %al
	jz	3f
	out	%al, %dx
	inc	%si
	jmp	2b
3:	pop	%si
	pop	%dx
	pop	%ax
	iret

msg:	.asciz	"NMI\n"
