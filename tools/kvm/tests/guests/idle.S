/* Sleep for ever (see idle.inc).  The guest for tests that need many
 * guests alive. */
	.include "idle.inc"
	.code16
	.globl	_start
_start:
	cli
	IDLE_FOREVER
