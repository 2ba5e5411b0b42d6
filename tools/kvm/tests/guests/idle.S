/* Sleep for ever: interrupts off and halted, so the vCPU waits in the
 * kernel and costs the host nothing.  The guest for tests that need many
 * guests alive at once. */
	.code16
	.globl	_start
_start:
	cli
1:	hlt
	jmp	1b
