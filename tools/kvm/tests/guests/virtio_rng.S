/* A minimal virtio driver: find the legacy virtio-rng on PCI bus 0
 * through configuration mechanism #1, set up queue 0 through its I/O BAR,
 * ask for 16 bytes, poll the used ring and print them in hex on ttyS0.
 * Registers: virtio 0.9.5 legacy PCI layout. */
	.include "put_hex.inc"
	.code16
	.globl	_start
	.set	VRING, 0x2000		/* segment: desc 0x20000, avail 0x21000, used 0x22000 */
	.set	BUF, 0x3000		/* segment of the 16-byte buffer at 0x30000 */
_start:
	xor	%bx, %bx		/* slot */
scan:	mov	%bx, %ax
	shl	$11, %ax
	mov	$0x8000, %dx		/* enable bit, bus 0 */
	shl	$16, %edx
	mov	%ax, %dx
	mov	%edx, %eax
	mov	$0xcf8, %dx
	out	%eax, %dx
	mov	$0xcfc, %dx
	in	%dx, %eax
	cmp	$0x10051af4, %eax	/* virtio legacy rng */
	je	found
	inc	%bx
	cmp	$32, %bx
	jne	scan
	jmp	fail
found:	mov	%edx, %eax		/* keep slot address: reread it */
	mov	%bx, %ax
	shl	$11, %ax
	movzwl	%ax, %eax
	or	$0x80000010, %eax	/* BAR0 */
	mov	$0xcf8, %dx
	out	%eax, %dx
	mov	$0xcfc, %dx
	in	%dx, %eax
	and	$0xfffc, %ax
	mov	%ax, %si		/* I/O base */

	lea	18(%si), %dx		/* status: reset, then ACKNOWLEDGE|DRIVER */
	xor	%al, %al
	out	%al, %dx
	mov	$3, %al
	out	%al, %dx
	lea	4(%si), %dx		/* guest features: none */
	xor	%eax, %eax
	out	%eax, %dx

	mov	$VRING, %ax		/* descriptor 0: BUF, 16 bytes, device-writable */
	mov	%ax, %es
	movl	$0x30000, %es:0
	movl	$0, %es:4
	movl	$16, %es:8
	movw	$2, %es:12
	movw	$0, %es:14
	movw	$0, %es:0x1004		/* avail.ring[0] = 0 */
	movw	$1, %es:0x1002		/* avail.idx = 1 */
	movw	$0, %es:0x2002		/* used.idx = 0 */

	lea	14(%si), %dx		/* queue select 0 */
	xor	%ax, %ax
	out	%ax, %dx
	lea	8(%si), %dx		/* queue PFN */
	mov	$0x20, %eax
	out	%eax, %dx
	lea	18(%si), %dx		/* DRIVER_OK */
	mov	$7, %al
	out	%al, %dx
	lea	16(%si), %dx		/* notify queue 0 */
	xor	%ax, %ax
	out	%ax, %dx

wait:	cmpw	$1, %es:0x2002		/* used.idx */
	jne	wait

	mov	$BUF, %ax
	mov	%ax, %es
	PUT_HEX16
	jmp	reset
fail:	mov	$'?', %al
	call	putc
reset:	mov	$0xfe, %al
	out	%al, $0x64
1:	hlt
	jmp	1b

nibble:	and	$0xf, %al
	add	$'0', %al
	cmp	$'9', %al
	jbe	putc
	add	$('a' - '0' - 10), %al
putc:	mov	$0x3f8, %dx
	out	%al, %dx
	ret
