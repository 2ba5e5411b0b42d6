/* Every vCPU halts with interrupts off, as Linux's poweroff leaves a PC
 * with no ACPI: lkvm must notice and end with status 0. */
	.code16
	.globl	_start
_start:
	cli
1:	hlt
	jmp	1b
