/*
 * The arm64 guest the gdb stub's tests debug: it turns the MMU on with
 * one table for both halves (1 GiB blocks: device memory at 0, RAM
 * at 0x80000000 by its own address and again at HIGH + 0x80000000) and
 * runs its loop from the high mapping, so every address gdb uses goes
 * through TTBR1.  The loop counts in `counter` up to `limit` past
 * `bp_here`, then `message` goes to the UART and PSCI powers off.
 */
	.equ UART_THR, 0x09000000
	.equ PSCI_SYSTEM_OFF, 0x84000008
	.equ RAM, 0x80000000
	.equ HIGH, 0xffffff8000000000	/* TTBR1's base with T1SZ 25 */
	.equ DEVICE_BLOCK, 0x405	/* valid block, AttrIndx 1, AF */
	.equ NORMAL_BLOCK, 0x701	/* valid block, AttrIndx 0, inner shareable, AF */
	.equ MAIR, 0x00ff		/* attr 0 normal write-back, attr 1 device nGnRnE */
	/* T0SZ = T1SZ = 25 (39 bits), TG1 4K, write-back inner shareable walks, IPS 36 bits */
	.equ TCR, 25 | 25 << 16 | 2 << 30 | 0x3500 | 0x3500 << 16 | 1 << 32
	.equ SCTLR_MCI, 1 | 1 << 2 | 1 << 12

	.include "image.inc"

start:
	adr	x1, table
	ldr	x2, =DEVICE_BLOCK
	str	x2, [x1]		/* 0-1 GiB: the UART */
	ldr	x2, =RAM | NORMAL_BLOCK
	str	x2, [x1, #16]		/* 2-3 GiB: RAM */
	msr	ttbr0_el1, x1
	msr	ttbr1_el1, x1
	ldr	x2, =MAIR
	msr	mair_el1, x2
	ldr	x2, =TCR
	msr	tcr_el1, x2
	dsb	sy
	tlbi	vmalle1
	dsb	sy
	isb
	mrs	x2, sctlr_el1
	ldr	x3, =SCTLR_MCI
	orr	x2, x2, x3
	msr	sctlr_el1, x2
	isb
	adr	x9, high		/* where it runs now, by RAM's own address */
	ldr	x10, =HIGH
	add	x9, x9, x10
	br	x9

high:
	adr	x3, counter
	.globl	bp_here
loop:	ldr	x4, [x3]
	add	x4, x4, #1
	str	x4, [x3]
bp_here:
	ldr	x5, limit
	cmp	x4, x5
	b.lo	loop
	adr	x3, message
	ldr	x4, =UART_THR
1:	ldrb	w5, [x3], #1
	cbz	w5, off
	strb	w5, [x4]
	b	1b
off:
	ldr	w0, =PSCI_SYSTEM_OFF
	hvc	#0
	b	.

	.ltorg
	.balign	8
	.globl	counter, limit, message
counter:	.quad	0
limit:		.quad	2
message:	.asciz	"arm64 gdb done\n"
	.balign	4096
table:	.space	4096
image_end:
