/* The boot CPU starts the others as firmware does: INIT, then two
 * STARTUP IPIs with vector 0x10, which starts them in real mode at
 * 1000:0000, here.  The APs wait for that (kvmtool leaves them so); a
 * flat binary is entered by the boot CPU alone.  Each CPU takes a
 * spinlock, prints "cpu N" with its APIC ID, and counts itself in; the
 * boot CPU waits for all of them (the count is CPUID leaf 1's EBX[23:16])
 * and resets.  The IPIs go through the x2APIC's ICR, an MSR, which real
 * mode can write. */
	.include "start_aps.inc"
	.code16
	.globl	_start
_start:
	cli
	mov	%cs, %ax		/* an AP comes out of INIT with DS at 0 */
	mov	%ax, %ds
	mov	$1, %eax
	cpuid
	mov	%ebx, %ecx
	shr	$24, %ebx		/* bl: APIC ID */
	shr	$16, %ecx		/* cl: number of CPUs */
1:	mov	$1, %al
	xchg	%al, lock
	test	%al, %al
	jnz	1b
	mov	$msg, %si
	mov	$0x3f8, %dx
2:	lodsb
	test	%al, %al
	jz	3f
	out	%al, %dx
	jmp	2b
3:	mov	%bl, %al
	and	$0x0f, %al
	add	$'0', %al
	cmp	$'9', %al
	jbe	4f
	add	$('a' - '9' - 1), %al
4:	out	%al, %dx
	mov	$'\n', %al
	out	%al, %dx
	incb	count
	movb	$0, lock
	test	%bl, %bl
	jnz	park
	push	%cx
	START_APS
	pop	%cx
5:	cmp	count, %cl
	ja	5b
	mov	$0xfe, %al
	out	%al, $0x64
park:	hlt
	jmp	park

msg:	.asciz	"cpu "
lock:	.byte	0
count:	.byte	0
