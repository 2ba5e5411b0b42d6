/* A 128 KiB firmware image for -f/--firmware: loaded at 0xE0000, so its
 * last 16 bytes hold the reset vector F000:FFF0, which jumps back into
 * the image (segment E000) to print a line and reset.  Entered anywhere
 * else (at its start, as a flat binary), it halts for good, silent. */
	.code16
	.globl	_start
_start:
	cli
	hlt
entry:	mov	%cs, %ax
	mov	%ax, %ds
	mov	$msg, %si
	call	puts
	mov	$0xfe, %al
	out	%al, $0x64
3:	hlt
	jmp	3b

msg:	.asciz	"Hello from firmware\n"

	.include "puts.inc"

	.org	0x1fff0
reset:	ljmp	$0xe000, $entry
	.org	0x20000
