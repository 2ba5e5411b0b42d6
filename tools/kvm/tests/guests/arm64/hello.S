/*
 * The tiny arm64 guest: an Image header (so lkvm loads it as it loads
 * Linux), then code that checks the device tree lkvm points x0 at,
 * says so on the 16550 UART and powers off through PSCI.
 */
	.equ UART_THR, 0x09000000
	.equ FDT_MAGIC_LE, 0xedfe0dd0	/* 0xd00dfeed read little-endian */
	.equ PSCI_SYSTEM_OFF, 0x84000008

	.include "image.inc"

start:
	ldr	w1, [x0]
	ldr	w2, =FDT_MAGIC_LE
	adr	x3, no_dt
	cmp	w1, w2
	b.ne	print
	adr	x3, hello
print:
	ldr	x4, =UART_THR
1:	ldrb	w5, [x3], #1
	cbz	w5, off
	strb	w5, [x4]
	b	1b
off:
	ldr	w0, =PSCI_SYSTEM_OFF
	hvc	#0
	b	.

hello:	.asciz	"Hello from arm64, a device tree in x0\n"
no_dt:	.asciz	"arm64: no device tree in x0\n"
	.ltorg
	.balign	8
image_end:
