"""The Intel MultiProcessor Specification 1.4 table: how a kernel booted
without ACPI finds its CPUs, its buses and the I/O APIC."""

import struct

# Layouts and values from the MP spec 1.4, chapter 4 (no uapi header has them).
FLOATING = "<4sIBBBB4s"  # "_MP_", config table address, length/16, rev, checksum, features
CONFIG = "<4sHBB8s12sIHHIHBB"  # "PCMP" header, 44 bytes
PROCESSOR = "<BBBBII8x"
BUS = "<BB6s"
IOAPIC = "<BBBBI"
INTERRUPT = "<BBHBBBB"  # I/O and local interrupt assignment entries
SPEC_REV = 4
ENTRY_PROCESSOR, ENTRY_BUS, ENTRY_IOAPIC, ENTRY_IO_INTERRUPT, ENTRY_LOCAL_INTERRUPT = range(5)
CPU_ENABLED, CPU_BOOT = 1, 2
IOAPIC_ENABLED = 1
INT_VECTORED, INT_NMI, INT_EXTINT = 0, 1, 3
LAPIC_VERSION = 0x14
IOAPIC_VERSION = 0x11
LAPIC_ADDR = 0xFEE00000
IOAPIC_ADDR = 0xFEC00000
ALL_LAPICS = 0xFF
ISA_BUS = 0
ISA_IRQS = 16


def _checksum(data: bytes) -> int:
    return -sum(data) & 0xFF


def _with_checksum(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([_checksum(data)]) + data[at + 1:]


def build(addr: int, cpus: int, cpu_signature: int, cpu_features: int) -> bytes:
    """The floating pointer at `addr` (16-byte aligned, in the BIOS area)
    followed by the configuration table."""
    ioapic_id = cpus  # after the CPUs' APIC IDs
    entries = [struct.pack(PROCESSOR, ENTRY_PROCESSOR, i, LAPIC_VERSION,
                           CPU_ENABLED | (CPU_BOOT if i == 0 else 0),
                           cpu_signature, cpu_features) for i in range(cpus)]
    entries.append(struct.pack(BUS, ENTRY_BUS, ISA_BUS, b"ISA   "))
    entries.append(struct.pack(IOAPIC, ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION,
                               IOAPIC_ENABLED, IOAPIC_ADDR))
    # KVM's in-kernel I/O APIC takes ISA IRQ n on pin n.
    entries += [struct.pack(INTERRUPT, ENTRY_IO_INTERRUPT, INT_VECTORED, 0, ISA_BUS,
                            irq, ioapic_id, irq) for irq in range(ISA_IRQS)]
    entries += [struct.pack(INTERRUPT, ENTRY_LOCAL_INTERRUPT, kind, 0, ISA_BUS, 0,
                            ALL_LAPICS, lint) for lint, kind in enumerate((INT_EXTINT, INT_NMI))]
    body = b"".join(entries)
    header = struct.pack(CONFIG, b"PCMP", struct.calcsize(CONFIG) + len(body), SPEC_REV, 0,
                         b"LKVM    ", b"LKVM MPTABLE", 0, 0, len(entries), LAPIC_ADDR, 0, 0, 0)
    config = _with_checksum(header + body, 7)
    size = struct.calcsize(FLOATING)
    floating = struct.pack(FLOATING, b"_MP_", addr + size, size // 16, SPEC_REV, 0, 0,
                           bytes(4))
    return _with_checksum(floating, 10) + config
