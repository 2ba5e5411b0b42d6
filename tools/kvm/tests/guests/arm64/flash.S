/*
 * -F/--flash from an arm64 guest: the CFI flash at 32 MiB, where lkvm's
 * device tree says it is.  Print the query string's first byte (a read
 * that exits: the array's read-only slot is gone in query mode), program
 * "ok\n" at offset 4 (a store to the read-only slot exits, as a command),
 * read it back as an array (through the slot, no exit), print it and
 * power off through PSCI.
 */
	.equ UART_THR, 0x09000000
	.equ FLASH, 0x02000000
	.equ PSCI_SYSTEM_OFF, 0x84000008

	.include "image.inc"

start:
	ldr	x1, =FLASH
	ldr	x4, =UART_THR
	ldr	w2, =0x00980098		/* read query */
	str	w2, [x1]
	ldrb	w3, [x1, #0x10 * 4]	/* CFI address 0x10: 'Q' */
	strb	w3, [x4]
	ldr	w2, =0x00ff00ff		/* read array */
	str	w2, [x1]
	ldr	w2, =0x00400040		/* word program... */
	str	w2, [x1]
	ldr	w2, =0x000a6b6f		/* ..."ok\n" at 4 */
	str	w2, [x1, #4]
	ldr	w2, =0x00ff00ff		/* read array */
	str	w2, [x1]
	ldr	w3, [x1, #4]
	mov	x5, #3
1:	strb	w3, [x4]
	lsr	w3, w3, #8
	subs	x5, x5, #1
	b.ne	1b
	ldr	w0, =PSCI_SYSTEM_OFF
	hvc	#0
	b	.

	.ltorg
	.balign	8
image_end:
