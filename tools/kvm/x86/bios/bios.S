/* lkvm's BIOS: the few real-mode services Linux's setup code calls.
 *
 * Loaded at F000:0000.  lkvm points every IVT vector at `iret_stub` and
 * INT 15h at `int15`, and writes the e820 map into `e820_table`; the
 * header below tells it where those are.  Everything else the setup code
 * asks (video, keyboard, disks, APM) is answered by leaving the registers
 * as they were, which reads as "not supported" or "nothing there".
 */
	.code16
	.globl	_start

	.set	SMAP, 0x534d4150	/* "SMAP": INT 15h E820 signature */
	.set	E820_ENTRY, 20		/* bytes per entry (ACPI spec 15.1) */
	.set	E820_MAX, 32
	.set	CF, 0x01		/* carry, in the FLAGS that iret restores */
	.set	NOT_CF, 0xfe

_start:
header:
	.word	iret_stub
	.word	int15
	.word	e820_count
	.word	e820_table
	.word	E820_MAX

/* Return from an interrupt with CF set or clear in the caller's FLAGS,
 * which sit above IP and CS on the stack. */
set_cf:
	push	%bp
	mov	%sp, %bp
	orb	$CF, 6(%bp)
	pop	%bp
iret_stub:
	iret

clear_cf:
	push	%bp
	mov	%sp, %bp
	andb	$NOT_CF, 6(%bp)
	pop	%bp
	iret

/* INT 15h: only AX=E820h, "query system address map".  EBX is the
 * continuation value: the index of the entry to return; 0 once done. */
int15:
	cmp	$0xe820, %eax
	jne	unsupported
	cmp	$SMAP, %edx
	jne	unsupported
	movzwl	%cs:e820_count, %eax
	cmp	%eax, %ebx
	jae	unsupported
	push	%ds
	push	%si
	push	%di
	push	%cs
	pop	%ds
	imul	$E820_ENTRY, %bx, %si
	add	$e820_table, %si
	mov	$E820_ENTRY, %cx
	cld
	rep	movsb
	pop	%di
	pop	%si
	pop	%ds
	mov	$E820_ENTRY, %ecx
	mov	$SMAP, %eax
	inc	%ebx
	cmp	%cs:e820_count, %bx
	jb	clear_cf
	xor	%ebx, %ebx
	jmp	clear_cf

unsupported:
	mov	$0x86, %ah		/* "function not supported" */
	jmp	set_cf

	.balign	4
e820_count:
	.word	0
	.balign	4
e820_table:
	.space	E820_ENTRY * E820_MAX
