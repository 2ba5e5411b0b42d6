/* Sleep for ever: halted with interrupts on, so the vCPU waits in the
 * kernel and costs the host nothing, yet is not powered off (lkvm ends a
 * guest whose CPUs all halt with interrupts off).  Every interrupt vector
 * points at an iret.  The guest for tests that need many guests alive. */
	.code16
	.globl	_start
_start:
	cli
	xor	%ax, %ax
	mov	%ax, %es
	xor	%di, %di
	mov	$256, %cx
1:	movw	$isr, %es:(%di)
	movw	%cs, %es:2(%di)
	add	$4, %di
	loop	1b
	sti
2:	hlt
	jmp	2b

isr:	iret
