/* A triple fault: in protected mode with an empty IDT, a breakpoint
 * cannot be delivered, nor can the faults that follow.  lkvm must stop
 * with a register dump and a non-zero status. */
	.code16
	.globl	_start
	.set	BASE, 0x10000		/* where flat binaries load */
_start:
	cli
	lgdtl	gdtr
	mov	%cr0, %eax
	or	$1, %eax		/* PE */
	mov	%eax, %cr0
	ljmpl	$0x08, $(BASE + pm)

	.code32
pm:	mov	$0x10, %ax
	mov	%ax, %ds
	mov	%ax, %ss
	lidt	BASE + idtr
	mov	$0x5a5a5a5a, %ebx	/* a marker to find in the dump */
	int3
1:	hlt
	jmp	1b

	.p2align 3
gdt:	.quad	0
	.quad	0x00cf9a000000ffff	/* flat 32-bit code */
	.quad	0x00cf92000000ffff	/* flat data */
gdtr:	.word	gdtr - gdt - 1
	.long	BASE + gdt
idtr:	.word	0
	.long	0
