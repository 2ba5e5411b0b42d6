/*
 * A ppc64le flat binary linked at 0, entered in real mode: prints its
 * greeting on the hypervisor console, a character per H_PUT_TERM_CHAR,
 * then powers the machine off through RTAS (the H_RTAS hypercall on an
 * argument block of its own), which ends lkvm with status 0.
 */
	.set	H_PUT_TERM_CHAR, 0x58
	.set	KVMPPC_H_RTAS, 0xf000
	.set	VTY, 0x3000		/* the vty's unit address, 0x30000000, >> 16 */
	.set	RTAS_POWER_OFF, 0x2001	/* lkvm's token (powerpc/rtas.py) */

	.text
	.globl	_start
_start:
	li	8, msg
1:	lbz	6, 0(8)
	cmpdi	6, 0
	beq	2f
	li	3, H_PUT_TERM_CHAR
	lis	4, VTY
	li	5, 1
	sldi	6, 6, 56		/* PAPR packs the characters big-endian */
	sc	1
	addi	8, 8, 1
	b	1b

	/* power-off(0, 0): token, nargs 2, nret 1, big-endian words. */
2:	li	9, block
	li	10, RTAS_POWER_OFF
	stwbrx	10, 0, 9
	li	11, 4
	li	10, 2
	stwbrx	10, 11, 9
	li	11, 8
	li	10, 1
	stwbrx	10, 11, 9
	li	3, 0
	ori	3, 3, KVMPPC_H_RTAS
	mr	4, 9
	sc	1
3:	b	3b			/* not reached: lkvm has ended */

msg:	.asciz	"Hello from ppc64\n"
	.balign	4
block:	.space	32
