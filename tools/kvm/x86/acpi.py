"""Minimal ACPI tables: RSDP -> XSDT -> FADT (-> FACS, DSDT) and MADT.

Enough for Linux to find its CPUs and I/O APIC (the MADT) without an MP
table, and to power off through the FADT's PM1a control block, which
hw/acpi_pm.py models.  Layouts from the ACPI specification 6.4, chapter 5
(no uapi header carries them).
"""

import struct

from hw.pci import CONFIG_ADDRESS, CONFIG_DATA, CONFIG_PORT_SIZE
from x86 import aml
from x86.layout import GAP_START, VIRTIO_MMIO_START
from x86.mptable import IOAPIC_ADDR, LAPIC_ADDR

HEADER = "<4sIBB6s8sI4sI"  # signature length revision checksum oem ids, creator
RSDP = "<8sB6sBIIQB3x"
OEM_ID, OEM_TABLE_ID, CREATOR = b"LKVM  ", b"LKVMACPI", b"LKVM"
RSDP_REVISION = 2
FADT_REVISION, FADT_MINOR = 6, 4
FADT_LEN = 276
FACS_LEN = 64
FACS_ALIGN = 64

# FADT field offsets (table 5.9) and values.
FADT_FIRMWARE_CTRL, FADT_DSDT = 36, 40
FADT_SCI_INT = 46
FADT_PM1A_EVT_BLK, FADT_PM1A_CNT_BLK = 56, 64
FADT_PM1_EVT_LEN, FADT_PM1_CNT_LEN = 88, 89
FADT_IAPC_BOOT_ARCH, FADT_FLAGS = 109, 112
FADT_MINOR_VERSION, FADT_X_FIRMWARE_CTRL, FADT_X_DSDT = 131, 132, 140
IAPC_LEGACY_DEVICES, IAPC_8042, IAPC_NO_VGA = 1 << 0, 1 << 1, 1 << 2
FLAG_WBINVD, FLAG_PROC_C1, FLAG_SLP_BUTTON, FLAG_PWR_BUTTON = 1 << 0, 1 << 2, 1 << 5, 1 << 4
SCI_IRQ = 9

# MADT entries (5.2.12).
MADT_PCAT_COMPAT = 1
MADT_LAPIC = "<BBBBI"  # type 0: uid, APIC ID, flags
MADT_IOAPIC = "<BBBBII"  # type 1: id, reserved, address, GSI base
MADT_LAPIC_NMI = "<BBBHB"  # type 4: uid (0xff: all), flags, LINT#
LAPIC_ENABLED = 1
ALL_PROCESSORS = 0xFF

# The PM1 blocks on I/O ports, and the sleep type _S5 gives for soft-off.
PM1A_EVT_PORT, PM1_EVT_LEN = 0x600, 4
PM1A_CNT_PORT, PM1_CNT_LEN = 0x604, 2
PM_BASE, PM_LEN = PM1A_EVT_PORT, PM1_EVT_LEN + PM1_CNT_LEN
S5_SLP_TYP = 5

# The extent of PCI configuration mechanism #1's ports as hw/pci.py
# decodes them, and its one bus.
PCI_CONFIG_LEN = CONFIG_DATA + CONFIG_PORT_SIZE - CONFIG_ADDRESS
PCI_BUSES = 1


def _checksum(data: bytes) -> int:
    return -sum(data) & 0xFF


def _table(signature: bytes, revision: int, body: bytes) -> bytes:
    length = struct.calcsize(HEADER) + len(body)
    data = struct.pack(HEADER, signature, length, revision, 0, OEM_ID, OEM_TABLE_ID, 1,
                       CREATOR, 1) + body
    return data[:9] + bytes([_checksum(data)]) + data[10:]


def _dsdt() -> bytes:
    """_S5 for soft-off, and the PCI host bridge: without it a guest on
    ACPI finds no PCI bus (it would scan only the bridges ACPI lists).
    The bridge decodes bus 0, all I/O ports but its own 0xcf8 block, and
    the BAR window of the 32-bit gap."""
    s5 = aml.package(aml.integer(S5_SLP_TYP), aml.integer(S5_SLP_TYP),
                     aml.integer(0), aml.integer(0))
    crs = aml.resources(
        aml.word_range(aml.RANGE_BUS, 0, PCI_BUSES - 1),
        aml.io_port(CONFIG_ADDRESS, PCI_CONFIG_LEN),
        aml.word_range(aml.RANGE_IO, 0, CONFIG_ADDRESS - 1),
        aml.word_range(aml.RANGE_IO, CONFIG_ADDRESS + PCI_CONFIG_LEN, 0xFFFF),
        aml.dword_memory(GAP_START, VIRTIO_MMIO_START - 1))
    pci0 = aml.device("PCI0", aml.name("_HID", aml.eisa_id("PNP0A03")),
                      aml.name("_UID", aml.integer(0)), aml.name("_SEG", aml.integer(0)),
                      aml.name("_BBN", aml.integer(0)), aml.name("_CRS", crs))
    return _table(b"DSDT", 2, aml.name("_S5_", s5) + aml.scope("\\_SB_", pci0))


def _facs() -> bytes:
    return struct.pack("<4sIIIIIQB3xI24x", b"FACS", FACS_LEN, 0, 0, 0, 0, 0, 2, 0)


def _fadt(facs: int, dsdt: int) -> bytes:
    body = bytearray(FADT_LEN - struct.calcsize(HEADER))

    def put(fmt: str, offset: int, value: int) -> None:
        struct.pack_into(fmt, body, offset - struct.calcsize(HEADER), value)

    put("<I", FADT_FIRMWARE_CTRL, facs)
    put("<I", FADT_DSDT, dsdt)
    put("<H", FADT_SCI_INT, SCI_IRQ)
    put("<I", FADT_PM1A_EVT_BLK, PM1A_EVT_PORT)
    put("<I", FADT_PM1A_CNT_BLK, PM1A_CNT_PORT)
    put("<B", FADT_PM1_EVT_LEN, PM1_EVT_LEN)
    put("<B", FADT_PM1_CNT_LEN, PM1_CNT_LEN)
    put("<H", FADT_IAPC_BOOT_ARCH, IAPC_LEGACY_DEVICES | IAPC_8042 | IAPC_NO_VGA)
    put("<I", FADT_FLAGS, FLAG_WBINVD | FLAG_PROC_C1 | FLAG_PWR_BUTTON | FLAG_SLP_BUTTON)
    put("<B", FADT_MINOR_VERSION, FADT_MINOR)
    put("<Q", FADT_X_FIRMWARE_CTRL, facs)
    put("<Q", FADT_X_DSDT, dsdt)
    return _table(b"FACP", FADT_REVISION, bytes(body))


def _madt(cpus: int) -> bytes:
    ioapic_id = cpus
    body = struct.pack("<II", LAPIC_ADDR, MADT_PCAT_COMPAT)
    body += b"".join(struct.pack(MADT_LAPIC, 0, 8, i, i, LAPIC_ENABLED) for i in range(cpus))
    body += struct.pack(MADT_IOAPIC, 1, 12, ioapic_id, 0, IOAPIC_ADDR, 0)
    body += struct.pack(MADT_LAPIC_NMI, 4, 6, ALL_PROCESSORS, 0, 1)
    return _table(b"APIC", 5, body)


def build(base: int, cpus: int) -> bytes:
    """The tables laid out from `base` (16-byte aligned, in the BIOS area
    where a kernel scans for the RSDP), RSDP first."""
    rsdp_len = struct.calcsize(RSDP)
    facs = (base + rsdp_len + FACS_ALIGN - 1) & ~(FACS_ALIGN - 1)
    out = bytearray(facs - base) + _facs()
    dsdt = base + len(out)
    out += _dsdt()
    fadt = base + len(out)
    out += _fadt(facs, dsdt)
    madt = base + len(out)
    out += _madt(cpus)
    xsdt = base + len(out)
    out += _table(b"XSDT", 1, struct.pack("<QQ", fadt, madt))
    rsdp = struct.pack(RSDP, b"RSD PTR ", 0, OEM_ID, RSDP_REVISION, 0, rsdp_len, xsdt, 0)
    rsdp = rsdp[:8] + bytes([_checksum(rsdp[:20])]) + rsdp[9:]
    rsdp = rsdp[:32] + bytes([_checksum(rsdp)]) + rsdp[33:]
    out[:rsdp_len] = rsdp
    return bytes(out)
