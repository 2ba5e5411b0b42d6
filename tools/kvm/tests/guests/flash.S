/* -F/--flash from a guest on /dev/kvm: the CFI flash (hw/cfi_flash.py)
 * driven from real mode through a 4 GiB ES, at 0xC0000000 where
 * tests/test_cfi_flash.py puts it.  Print the query string's first byte
 * (a read that exits: the array's read-only slot is gone in query mode),
 * program "ok\n" at offset 4 (a store to the read-only slot still exits,
 * as a command), read it back as an array (through the slot, no exit),
 * print it and reset. */
	.include "unreal_es.inc"
	.code16
	.globl	_start
_start:
	cli
	UNREAL_ES

	mov	$0xc0000000, %ebx
	mov	$0x3f8, %dx
	movl	$0x00980098, %es:(%ebx)	/* read query */
	mov	%es:0x10 * 4(%ebx), %al	/* CFI address 0x10: 'Q' */
	out	%al, %dx
	movl	$0x00ff00ff, %es:(%ebx)	/* read array */
	movl	$0x00400040, %es:(%ebx)	/* word program... */
	movl	$0x000a6b6f, %es:4(%ebx)	/* ..."ok\n" at 4 */
	movl	$0x00ff00ff, %es:(%ebx)	/* read array */
	mov	%es:4(%ebx), %eax
	mov	$3, %cx
1:	out	%al, %dx
	shr	$8, %eax
	loop	1b

	mov	$0xfe, %al		/* i8042: pulse the reset line */
	out	%al, $0x64
2:	hlt
	jmp	2b

	UNREAL_GDT
