/* A 64-bit guest for the gdb stub: from the flat binary's real mode, build
 * page tables that map the low 2 MiB both 1:1 and at HIGH (as a kernel
 * maps itself), enter long mode and run from the high mapping, so that a
 * debugger's addresses are virtual ones the page tables must translate.
 * It counts `counter` up to `limit`, then prints `message` and resets;
 * a debugger can stop at `bp_here`, watch `counter` and change `limit`
 * or `message`.  Linked at 0 and loaded at LOAD: the symbol of a label in
 * the high half is at HIGH + LOAD + its offset. */
	.set	LOAD, 0x10000
	.set	HIGH, 0xffffffff80000000
	.set	PT, 0x30000		/* PML4, PDPT, PD: three pages */
	.code16
	.globl	_start
_start:
	cli
	mov	$PT >> 4, %ax
	mov	%ax, %es
	xor	%di, %di
	xor	%eax, %eax
	mov	$3 * 4096 / 4, %cx
	cld
	rep stosl
	movl	$PT + 0x1000 + 3, %es:0			/* PML4[0] */
	movl	$PT + 0x1000 + 3, %es:511 * 8		/* PML4[511] */
	movl	$PT + 0x2000 + 3, %es:0x1000		/* PDPT[0] */
	movl	$PT + 0x2000 + 3, %es:0x1000 + 510 * 8	/* PDPT[510] */
	movl	$0x83, %es:0x2000			/* a 2 MiB page at 0 */
	mov	$PT, %eax
	mov	%eax, %cr3
	mov	%cr4, %eax
	or	$0x20, %eax				/* PAE */
	mov	%eax, %cr4
	mov	$0xc0000080, %ecx			/* EFER.LME */
	rdmsr
	or	$0x100, %eax
	wrmsr
	lgdtl	%cs:gdtr
	mov	%cr0, %eax
	or	$0x80000001, %eax			/* PG, PE */
	mov	%eax, %cr0
	ljmpl	$8, $LOAD + long64

	.code64
long64:
	mov	$0x10, %ax
	mov	%ax, %ds
	mov	%ax, %es
	mov	%ax, %ss
	/* mov $HIGH + LOAD + high, %rax: sign-extended from 32 bits, spelt
	 * out because `as --32` cannot relocate a 64-bit immediate */
	.byte	0x48, 0xc7, 0xc0
	.long	HIGH + LOAD + high
	jmp	*%rax
high:
	lea	stack_top(%rip), %rsp
	.globl	count
count:
	incq	counter(%rip)
	mov	counter(%rip), %rax
	.globl	bp_here
bp_here:
	cmp	limit(%rip), %rax
	jb	count
	lea	message(%rip), %rsi
	mov	$0x3f8, %dx
1:	lodsb
	test	%al, %al
	jz	2f
	out	%al, %dx
	jmp	1b
2:	mov	$0xfe, %al				/* i8042: reset */
	out	%al, $0x64
3:	hlt
	jmp	3b

	.align	8
gdt:	.quad	0
	.quad	0x00af9b000000ffff			/* 64-bit code */
	.quad	0x00cf93000000ffff			/* data */
gdtr:	.word	3 * 8 - 1
	.long	LOAD + gdt
	.align	8
	.globl	counter, limit, message
counter: .quad	0
limit:	.quad	100
message: .asciz	"long64 done\n"
	.fill	32, 1, 0
	.align	16
	.fill	256, 1, 0
stack_top:
