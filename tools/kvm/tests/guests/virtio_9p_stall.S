/* A guest whose 9p request blocks in the host, and which then needs
 * another device.  It finds the legacy virtio-9p on PCI bus 0, queues
 * Tversion, Tattach, Twalk to "stall", Tlopen and Tread in one kick, then
 * asks the legacy virtio-rng for 16 bytes and prints them in hex on
 * ttyS0.  When the host blocks the open of "stall", the rng line shows
 * that other devices are still served.
 * Then, when a legacy virtio-blk is present too, it reboots.  Else it
 * resets the 9p device, as Linux does on its way down: the vCPU waits
 * there for the stuck device, until lkvm is stopped.
 * Registers: virtio 0.9.5 legacy PCI layout, MSI-X off. */
	.include "put_hex.inc"
	.include "idle.inc"
	.code16
	.globl	_start
	.set	P9_ID, 0x10091af4
	.set	BLK_ID, 0x10011af4
	.set	P9_RING, 0x4000		/* segment: desc 0x40000, avail 0x40800, used 0x41000 */
	.set	REPLIES, 0x60000	/* 256 bytes for each 9p reply */
	.set	LOAD, 0x10000		/* where lkvm loads a flat binary */
	.set	NREQ, 5
_start:
	cli
	mov	%cs, %ax
	mov	%ax, %ds

	/* The 9p queue: request i is descriptors 2i (the T-message, device
	 * readable) and 2i+1 (its reply buffer, device writable). */
	mov	$P9_RING, %ax
	mov	%ax, %es
	mov	$requests, %bx
	xor	%di, %di
	xor	%cx, %cx
	mov	$REPLIES, %ebp
1:	movzwl	(%bx), %eax
	add	$LOAD, %eax
	mov	%eax, %es:0(%di)
	movl	$0, %es:4(%di)
	movzwl	2(%bx), %eax
	mov	%eax, %es:8(%di)
	movw	$1, %es:12(%di)		/* VRING_DESC_F_NEXT */
	mov	%cx, %si
	shl	$1, %si
	lea	1(%si), %ax
	mov	%ax, %es:14(%di)
	mov	%ebp, %es:16(%di)
	movl	$0, %es:20(%di)
	movl	$256, %es:24(%di)
	movw	$2, %es:28(%di)		/* VRING_DESC_F_WRITE */
	movw	$0, %es:30(%di)
	mov	%si, %es:0x804(%si)	/* avail.ring[i] = 2i */
	add	$32, %di
	add	$4, %bx
	add	$256, %ebp
	inc	%cx
	cmp	$NREQ, %cx
	jne	1b
	movw	$NREQ, %es:0x802	/* avail.idx */

	mov	$P9_ID, %ecx
	call	find
	jc	fail
	mov	$(P9_RING >> 8), %eax
	call	setup
	call	notify
	mov	%si, p9_base

	call	rng16			/* the other device */
	jc	fail
	mov	$BLK_ID, %ecx		/* looked for now, so that nothing but */
	call	find			/* the reset follows the line below */
	setnc	has_blk

	mov	$RNG_BUF, %ax
	mov	%ax, %es
	PUT_HEX16

	cmpb	$0, has_blk
	jne	reset
	mov	p9_base, %si
	lea	18(%si), %dx		/* 9p status: reset */
	xor	%al, %al
	out	%al, %dx
	IDLE_FOREVER

fail:	mov	$'?', %al
	call	putc
reset:	mov	$0xfe, %al
	out	%al, $0x64
4:	hlt
	jmp	4b

p9_base:
	.word	0
has_blk:
	.byte	0

/* The 9P2000.L requests: size[4] type[1] tag[2], then the fields. */
requests:
	.word	tversion, tattach - tversion
	.word	tattach, twalk - tattach
	.word	twalk, tlopen - twalk
	.word	tlopen, tread - tlopen
	.word	tread, end - tread
tversion:
	.long	tattach - tversion
	.byte	100
	.word	0xffff			/* NOTAG */
	.long	8192			/* msize */
	.word	8
	.ascii	"9P2000.L"
tattach:
	.long	twalk - tattach
	.byte	104
	.word	1
	.long	0			/* fid */
	.long	0xffffffff		/* afid: NOFID */
	.word	0			/* uname "" */
	.word	0			/* aname "" */
	.long	0			/* n_uname */
twalk:
	.long	tlopen - twalk
	.byte	110
	.word	2
	.long	0			/* fid */
	.long	1			/* newfid */
	.word	1			/* nwname */
	.word	5
	.ascii	"stall"
tlopen:
	.long	tread - tlopen
	.byte	12
	.word	3
	.long	1			/* fid */
	.long	0			/* O_RDONLY */
tread:
	.long	end - tread
	.byte	116
	.word	4
	.long	1			/* fid */
	.quad	0			/* offset */
	.long	64			/* count */
end:

	.include "virtio_rng.inc"
	.include "legacy_virtio_pci.inc"
	.include "putc.inc"
