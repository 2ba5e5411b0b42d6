/* Every vCPU starts here: each takes a spinlock, prints "cpu N" with its
 * APIC ID, and counts itself in; the boot CPU waits for all of them (the
 * count is CPUID leaf 1's EBX[23:16]) and resets. */
	.code16
	.globl	_start
_start:
	cli
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
5:	cmp	count, %cl
	jne	5b
	mov	$0xfe, %al
	out	%al, $0x64
park:	hlt
	jmp	park

msg:	.asciz	"cpu "
lock:	.byte	0
count:	.byte	0
