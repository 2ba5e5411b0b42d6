/* Count for ever: %ebx goes up by one per loop and is written to port
 * 0x80 (the POST port, which nobody claims), so every round trips through
 * lkvm's vCPU thread.  A debug dump's rbx shows the progress; a paused
 * guest's rbx stands still.  An NMI prints "NMI\n" on ttyS0 and returns.
 * Every CPU counts: the boot CPU starts the others first. */
	.include "start_aps.inc"
	.code16
	.globl	_start
_start:
	xor	%ax, %ax
	mov	%ax, %es
	movw	$nmi, %es:2*4		/* real-mode IVT entry 2: NMI */
	mov	%cs, %es:2*4+2
	call	start_aps
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

/* The other CPUs wait for INIT and a STARTUP IPI, whose vector 0x10
 * starts them at 1000:0000, the top of this file: the boot CPU (APIC ID
 * 0) sends both to all but itself through the x2APIC's ICR, an MSR that
 * real mode can write.  A second STARTUP is what the MP spec asks. */
start_aps:
	mov	$1, %eax
	cpuid
	shr	$24, %ebx
	jnz	1f
	START_APS
1:	ret
