/* --vnc: find the VESA framebuffer on PCI bus 0 (vendor 1af4, device
 * 2000), reach it from real mode through a 4 GiB ES (unreal mode), paint
 * the screen 0x336699 with one red pixel at (10, 20), say so on ttyS0
 * and idle, so that a VNC client can look. */
	.include "idle.inc"
	.include "unreal_es.inc"
	.code16
	.globl	_start
_start:
	cli
	xor	%esi, %esi		/* the slot */
1:	mov	%esi, %eax
	shl	$11, %eax
	or	$0x80000000, %eax
	mov	$0xcf8, %dx
	out	%eax, %dx
	mov	$0xcfc, %dx
	in	%dx, %eax
	cmp	$0x20001af4, %eax
	je	2f
	inc	%esi
	cmp	$32, %esi
	jb	1b
	jmp	fail
2:	mov	%esi, %eax		/* BAR0: the framebuffer's address */
	shl	$11, %eax
	or	$0x80000010, %eax
	mov	$0xcf8, %dx
	out	%eax, %dx
	mov	$0xcfc, %dx
	in	%dx, %eax
	and	$0xfffffff0, %eax
	mov	%eax, %ebx

	UNREAL_ES

	mov	%ebx, %edi
	mov	$640 * 480, %ecx
	mov	$0x00336699, %eax
	cld
	addr32	rep stosl
	movl	$0x00ff0000, %es:(20 * 640 + 10) * 4(%ebx)

	mov	$drawn, %si
	jmp	say
fail:	mov	$nofb, %si
say:	mov	$0x3f8, %dx
3:	lodsb
	test	%al, %al
	jz	4f
	out	%al, %dx
	jmp	3b
4:	IDLE_FOREVER

	UNREAL_GDT

drawn:	.asciz	"drawn\n"
nofb:	.asciz	"no framebuffer\n"
