"""lkvm's ACPI tables as ACPICA's disassembler (iasl, the tool the kernel's
own ACPI developers use) reads them."""

import struct
import subprocess

from x86 import acpi
from x86.layout import ACPI_START, GAP_START, VIRTIO_MMIO_START


def table(tables: bytes, signature: bytes) -> bytes:
    at = tables.index(signature)
    (length,) = struct.unpack_from("<I", tables, at + 4)
    return tables[at:at + length]


def disassemble(aml: bytes, tmp_path) -> str:
    (tmp_path / "t.aml").write_bytes(aml)
    r = subprocess.run(["iasl", "-d", "t.aml"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    return (tmp_path / "t.dsl").read_text()


def test_dsdt_has_soft_off_and_the_pci_host_bridge(tmp_path):
    dsl = disassemble(table(acpi.build(ACPI_START, 2), b"DSDT"), tmp_path)
    assert "Name (_S5, Package (0x04)" in dsl
    assert 'Device (PCI0)' in dsl and 'EisaId ("PNP0A03")' in dsl
    # The bridge passes every I/O port but its own configuration ports,
    # and the BAR window below the virtio-mmio devices.
    for lo, hi in ((0, 0xCF7), (0xD00, 0xFFFF)):
        assert f"0x{lo:04X},             // Range Minimum\n" \
               f"                    0x{hi:04X},             // Range Maximum" in dsl
    assert f"0x{GAP_START:08X},         // Range Minimum" in dsl
    # Bus 0 and no other: without a bus-number resource Linux warns "No busn
    # resource found for root bus" and gives the bridge buses 00-ff.
    assert "WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode,\n" \
           "                    0x0000,             // Granularity\n" \
           "                    0x0000,             // Range Minimum\n" \
           "                    0x0000,             // Range Maximum" in dsl
    assert f"0x{VIRTIO_MMIO_START - 1:08X},         // Range Maximum" in dsl
    assert "InvalidRanges" not in dsl


def test_every_table_checksums_to_zero():
    tables = acpi.build(ACPI_START, 4)
    for sig in (b"DSDT", b"FACP", b"APIC", b"XSDT"):
        assert sum(table(tables, sig)) & 0xFF == 0, sig
