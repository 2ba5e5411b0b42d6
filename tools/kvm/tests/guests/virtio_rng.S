/* A minimal virtio driver: find the legacy virtio-rng on PCI bus 0, ask
 * it for 16 bytes and print them in hex on ttyS0.
 * Registers: virtio 0.9.5 legacy PCI layout. */
	.include "put_hex.inc"
	.code16
	.globl	_start
_start:
	call	rng16
	jc	fail
	mov	$RNG_BUF, %ax
	mov	%ax, %es
	PUT_HEX16
	jmp	reset
fail:	mov	$'?', %al
	call	putc
reset:	mov	$0xfe, %al
	out	%al, $0x64
1:	hlt
	jmp	1b

	.include "virtio_rng.inc"
	.include "legacy_virtio_pci.inc"
	.include "putc.inc"
