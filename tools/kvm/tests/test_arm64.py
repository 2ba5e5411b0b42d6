"""The arm64 arch's parts that run anywhere: the device tree (written with
libfdt, read back by dtc node by node), the Image header and the images
refused, where the Image, initrd and DT go, and the memory map."""

import argparse
import re
import struct
import subprocess
from types import SimpleNamespace

import pytest

from arm import dtb
from arm.arch import RTC_SPI, UART_SPI, Arm64
from arm.boot import load
from arm.gic import NR_SPIS, GicV2, GicV3
from arm.image import Image
from arm.layout import (
    FDT_MAX_SIZE,
    FLASH_BASE,
    FLASH_MAX_SIZE,
    GIC_DIST,
    GIC_REDIST,
    GIC_REDIST_END,
    GIC_REDIST_STRIDE,
    PCI_ECAM,
    PCI_ECAM_SIZE,
    PCI_MMIO_END,
    PCI_MMIO_START,
    RAM_START,
    RTC_BASE,
    SZ_2M,
    UART_BASE,
    VIRTIO_MMIO_START,
)
from kvm import fdt
from kvm.errors import LkvmError
from kvm.memory import GuestMemory
from tests.helpers import GUESTS, KVMDIR

MIB = 1 << 20


def decompile(blob: bytes) -> dict[str, dict[str, str]]:
    """dtc's reading of the blob: node path -> property -> value as dts
    writes it (an empty string for a boolean property)."""
    dts = subprocess.run(["dtc", "-q", "-I", "dtb", "-O", "dts"], input=blob,
                         capture_output=True, check=True, timeout=30).stdout.decode()
    nodes: dict[str, dict[str, str]] = {}
    path: list[str] = []
    for line in dts.splitlines():
        line = line.strip()
        if line.endswith("{"):
            path.append(line[:-1].strip())
            nodes["/".join(path[1:]) or "/"] = {}
        elif line == "};":
            path.pop()
        elif line.endswith(";") and path:
            name, _, value = line[:-1].partition(" = ")
            nodes["/".join(path[1:]) or "/"][name] = value
    return nodes


def cells(value: str) -> list[int]:
    return [int(c, 0) for c in re.findall(r"0x[0-9a-f]+|\d+", value.strip("<>"))]


def machine(**changes) -> dtb.Machine:
    m = dtb.Machine(ram=((RAM_START, 256 * MIB),), cpus=2, gic=GicV3(),
                    cmdline="console=ttyS0 quiet", uart_irq=UART_SPI, rtc_irq=RTC_SPI,
                    initrd=(RAM_START + 200 * MIB, RAM_START + 201 * MIB),
                    virtio_mmio=((VIRTIO_MMIO_START, 0x200, 2),), pci_slots=((1, 3), (2, 4)))
    return dtb.Machine(**{**m.__dict__, **changes})


def test_dt_node_by_node():
    dt = decompile(dtb.build(machine()))
    root = dt["/"]
    assert cells(root["#address-cells"]) == [2] and cells(root["#size-cells"]) == [2]
    gic_phandle = cells(root["interrupt-parent"])
    chosen = dt["chosen"]
    assert chosen["bootargs"] == '"console=ttyS0 quiet"'
    assert chosen["stdout-path"] == f'"/uart@{UART_BASE:x}"'
    assert cells(chosen["linux,initrd-start"]) == [0, RAM_START + 200 * MIB]
    assert cells(chosen["linux,initrd-end"]) == [0, RAM_START + 201 * MIB]
    assert cells(chosen["linux,pci-probe-only"]) == [1]   # the BARs as lkvm placed them
    mem = dt[f"memory@{RAM_START:x}"]
    assert mem["device_type"] == '"memory"'
    assert cells(mem["reg"]) == [0, RAM_START, 0, 256 * MIB]
    for i in range(2):
        cpu = dt[f"cpus/cpu@{i}"]
        assert cpu["device_type"] == '"cpu"' and cpu["enable-method"] == '"psci"'
        assert cells(cpu["reg"]) == [i]
    assert dt["psci"]["method"] == '"hvc"'
    assert dt["psci"]["compatible"] == '"arm,psci-0.2\\0arm,psci"'
    gic = dt[f"intc@{GIC_DIST:x}"]
    assert gic["compatible"] == '"arm,gic-v3"' and "interrupt-controller" in gic
    assert cells(gic["phandle"]) == gic_phandle
    assert cells(gic["reg"]) == [0, GIC_DIST, 0, 0x10000, 0, GIC_REDIST,
                                 0, 2 * GIC_REDIST_STRIDE]
    # Secure and non-secure physical, virtual, hypervisor timer PPIs.
    assert cells(dt["timer"]["interrupts"]) == [1, 13, 4, 1, 14, 4, 1, 11, 4, 1, 10, 4]
    uart = dt[f"uart@{UART_BASE:x}"]
    assert uart["compatible"] == '"ns16550a"'
    assert cells(uart["interrupts"]) == [0, UART_SPI, 4]  # SPI, level-triggered
    rtc = dt[f"rtc@{RTC_BASE:x}"]
    assert rtc["compatible"] == '"arm,pl031\\0arm,primecell"'
    assert rtc["clock-names"] == '"apb_pclk"'
    assert cells(rtc["clocks"]) == cells(dt["apb-pclk"]["phandle"])
    virtio = dt[f"virtio_mmio@{VIRTIO_MMIO_START:x}"]
    assert virtio["compatible"] == '"virtio,mmio"'
    assert cells(virtio["reg"]) == [0, VIRTIO_MMIO_START, 0, 0x200]
    assert cells(virtio["interrupts"]) == [0, 2, 4]
    pci = dt[f"pci@{PCI_ECAM:x}"]
    assert pci["compatible"] == '"pci-host-ecam-generic"' and pci["device_type"] == '"pci"'
    assert cells(pci["reg"]) == [0, PCI_ECAM, 0, PCI_ECAM_SIZE]
    assert cells(pci["ranges"]) == [0x02000000, 0, PCI_MMIO_START, 0, PCI_MMIO_START,
                                    0, PCI_MMIO_END - PCI_MMIO_START]
    # Slot n's INTA# to its SPI, level-triggered, at the GIC.
    assert cells(pci["interrupt-map"]) == [1 << 11, 0, 0, 1, *gic_phandle, 0, 3, 4,
                                           2 << 11, 0, 0, 1, *gic_phandle, 0, 4, 4]
    assert cells(pci["interrupt-map-mask"]) == [0xF800, 0, 0, 7]


def test_dt_gicv2_and_no_initrd():
    dt = decompile(dtb.build(machine(gic=GicV2(), cpus=3, initrd=None, pci_slots=())))
    assert dt[f"intc@{GIC_DIST:x}"]["compatible"] == '"arm,cortex-a15-gic"'
    # GICv2 PPIs name their CPUs: three, bits 8-10 of the flags.
    assert cells(dt["timer"]["interrupts"])[2] == 0x704
    assert "linux,initrd-start" not in dt["chosen"]
    assert "interrupt-map" not in dt[f"pci@{PCI_ECAM:x}"]
    assert not any(node.startswith("flash") for node in dt)    # no -F, no flash


def test_dt_flash():
    """-F/--flash: the node EDK2 finds its variable store by, with the
    flash's size (the file's, cut to a power of two) and a 32-bit bus."""
    dt = decompile(dtb.build(machine(flash=(FLASH_BASE, 2 * MIB))))
    flash = dt[f"flash@{FLASH_BASE:x}"]
    assert flash["compatible"] == '"cfi-flash"'
    assert cells(flash["reg"]) == [0, FLASH_BASE, 0, 2 * MIB]
    assert cells(flash["bank-width"]) == [4]
    assert flash["label"] == '"System-firmware"'
    # dtc, as the kernel's build runs it, finds nothing to warn about.
    r = subprocess.run(["dtc", "-I", "dtb", "-O", "dts", "-o", "/dev/null"],
                       input=dtb.build(machine(flash=(FLASH_BASE, FLASH_MAX_SIZE))),
                       capture_output=True, timeout=30)
    assert r.returncode == 0 and b"flash" not in r.stderr, r.stderr


def test_dt_that_does_not_fit():
    with pytest.raises(LkvmError, match=r"device tree \(\d+ bytes\) does not fit in the 64 KiB"):
        dtb.build(machine(cmdline="x" * FDT_MAX_SIZE))


def header(text_offset: int = 0, image_size: int = 0x1000, flags: int = 0xA,
           length: int = 0x1000) -> bytes:
    data = bytearray(length)
    struct.pack_into("<QQQ", data, 8, text_offset, image_size, flags)
    data[0x38:0x3C] = b"ARM\x64"
    return bytes(data)


def test_image_header():
    with open(f"{GUESTS}/arm64/hello.bin", "rb") as f:
        data = f.read()
    image = Image.parse(data)
    assert image.text_offset == 0 and image.size == len(data)
    big = Image.parse(header(text_offset=0x80000, image_size=0x200000))
    assert big.text_offset == 0x80000 and big.size == 0x200000
    assert Image.parse(header(image_size=0)).size == 0x1000  # before 3.17: the file's


@pytest.mark.parametrize("data, message", [
    (b"\0" * 0x202 + b"HdrS" + b"\0" * 0x100, "an x86 bzImage; this arm64 lkvm boots arm64"),
    (b"\x7fELF" + b"\0" * 60, "an ELF file"),
    (b"\0" * 0x1000, "not an arm64 Image: no"),
    (b"ARM\x64", "not an arm64 Image"),
    (header(flags=0xB), "big-endian"),
    (header(text_offset=0x80001), "text_offset 0x80001 is not a page multiple"),
    (header(image_size=0x800), "image_size 0x800 is less than the file's 0x1000"),
], ids=["bzimage", "elf", "no-magic", "short", "big-endian", "text-offset", "image-size"])
def test_bad_images(data, message):
    with pytest.raises(LkvmError, match=re.escape(message)):
        Arm64.boots_linux(data)


@pytest.mark.parametrize("name", ["hello", "gdb", "flash"])
def test_guests_share_one_image_header(name):
    """Every arm64 test guest takes its Image header from image.inc (as
    the x86 guests share puts.inc), and what make built from it is one
    lkvm loads: the header's own size, text_offset 0."""
    with open(f"{GUESTS}/arm64/{name}.S") as f:
        source = f.read()
    assert '.include "image.inc"' in source and '"ARM\\x64"' not in source
    with open(f"{GUESTS}/arm64/{name}.bin", "rb") as f:
        data = f.read()
    image = Image.parse(data)
    assert (image.text_offset, image.size) == (0, len(data))


def fake_vm(ram_mib: int) -> SimpleNamespace:
    return SimpleNamespace(ram_size=ram_mib * MIB,
                           mem=GuestMemory(Arm64().memory_layout(ram_mib * MIB)))


def test_placement():
    vm = fake_vm(64)
    image = Image.parse(header(text_offset=0x80000, image_size=8 * MIB))
    boot = load(vm, image, b"initrd" * 1000, "cmdline")
    assert boot.entry == RAM_START + 0x80000 and boot.entry % 0x1000 == 0
    assert boot.dtb == RAM_START + 62 * MIB and boot.dtb % SZ_2M == 0
    start, end = boot.initrd
    assert end <= boot.dtb and start % 0x1000 == 0 and end - start == 6000
    assert vm.mem.read(start, 6) == b"initri"[:5] + b"d"
    assert vm.mem.read(boot.entry + 0x38, 4) == b"ARM\x64"
    vm.mem.close()


@pytest.mark.parametrize("ram, initrd, message", [
    (8, None, "the Image takes 9 MiB and the device tree the top 2 MiB"),
    (16, b"\0" * (7 * MIB), "the initrd (7168 KiB) does not fit"),
])
def test_placement_that_does_not_fit(ram, initrd, message):
    vm = fake_vm(ram)
    image = Image.parse(header(text_offset=0x80000, image_size=8 * MIB))
    with pytest.raises(LkvmError, match=re.escape(message)):
        load(vm, image, initrd, "")
    vm.mem.close()


def test_memory_map():
    arch = Arm64()
    assert arch.memory_layout(512 * MIB) == [(RAM_START, 512 * MIB)]
    # The devices, each [start, end), apart from each other and from RAM.
    regions = sorted([
        (GIC_DIST, GIC_DIST + 0x10000), (GIC_REDIST, GIC_REDIST_END),
        (UART_BASE, UART_BASE + 0x1000), (RTC_BASE, RTC_BASE + 0x1000),
        (FLASH_BASE, FLASH_BASE + FLASH_MAX_SIZE),
        (VIRTIO_MMIO_START, VIRTIO_MMIO_START + 0x200 * len(Arm64.LEGACY_IRQS)),
        (PCI_MMIO_START, PCI_MMIO_END), (PCI_ECAM, PCI_ECAM + PCI_ECAM_SIZE),
        (RAM_START, RAM_START + 512 * MIB)])
    assert all(a[1] <= b[0] for a, b in zip(regions, regions[1:], strict=False)), regions
    assert GIC_REDIST + Arm64.MAX_CPUS * GIC_REDIST_STRIDE <= GIC_REDIST_END
    # The UART's and RTC's SPIs are not handed out again, and every line
    # handed out has its GSI route.
    assert {UART_SPI, RTC_SPI}.isdisjoint(Arm64.LEGACY_IRQS)
    routes = {gsi for gsi, _, _ in arch.irqchip_routes()}
    assert set(Arm64.LEGACY_IRQS) <= routes and max(routes) < NR_SPIS


# Run by Debian's python3, whose pylibfdt (1.6.1) is the one the arm64 test
# host has: device trees of every size up to a few KiB.
SWEEP = """
import sys
sys.path.insert(0, sys.argv[1])
from arm import dtb
from arm.gic import GicV3
for cpus in range(1, 9):
    for length in range(0, 1500, 3):
        dtb.build(dtb.Machine(ram=((0x80000000, 1 << 28),), cpus=cpus, gic=GicV3(),
                              cmdline="x" * length, uart_irq=0, rtc_irq=1))
print("ok")
"""


def test_dt_of_every_size_with_debians_libfdt():
    """Debian 12's pylibfdt does not grow the writer's buffer for the end
    tag: a tree that filled it failed with FDT_ERR_NOSPACE."""
    python = "/usr/bin/python3"
    if subprocess.run([python, "-c", "import libfdt"], capture_output=True).returncode:
        pytest.skip("no Debian python3-libfdt: run make")
    r = subprocess.run([python, "-c", SWEEP, KVMDIR], capture_output=True, text=True,
                       timeout=300)
    assert r.stdout == "ok\n", r.stderr[-2000:]


def test_dt_blob_is_its_totalsize():
    blob = dtb.build(machine())
    assert len(blob) == struct.unpack_from(">I", blob, 4)[0]


def options(*argv: str):
    parser = argparse.ArgumentParser()
    parser.add_argument("--virtio-transport", default="pci")
    parser.add_argument("-c", "--cpus", type=int)
    Arm64.add_options(parser)
    return parser.parse_args(argv)


@pytest.mark.parametrize("argv, message", [
    (["--virtio-transport", "pci-legacy"], "needs I/O ports, which arm64 guests have not"),
    (["--irqchip", "gicv2", "-c", "9"], "--cpus 9: a GICv2 takes at most 8 vCPUs"),
])
def test_options_arm64_cannot_take(argv, message):
    with pytest.raises(LkvmError, match=re.escape(message)):
        Arm64.configure(options(*argv))


def test_options():
    config = Arm64.configure(options("--irqchip", "gicv2", "--dump-dtb", "/tmp/x.dtb", "-c", "8"))
    assert (config.irqchip, config.dump_dtb) == ("gicv2", "/tmp/x.dtb")
    assert Arm64.configure(options()).irqchip == "gicv3"


@pytest.mark.parametrize("gic, hint", [(GicV2, "; try --irqchip gicv3"),
                                       (GicV3, "; try --irqchip gicv2")])
def test_a_gic_kvm_lacks(gic, hint):
    """The arm64 test host's KVM has no GICv2 (ENODEV): the line named
    the very option that failed as the way out."""
    with pytest.raises(LkvmError, match=re.escape(f"no in-kernel {gic.NAME} (") + ".*"
                       + re.escape(hint) + "$"):
        gic().create(SimpleNamespace(fd=-1))  # every ioctl fails


def test_dump_dtb_saves_the_blob_or_says_why_not(tmp_path):
    fdt.dump(str(tmp_path / "x.dtb"), b"\xd0\x0d\xfe\xed")
    assert (tmp_path / "x.dtb").read_bytes() == b"\xd0\x0d\xfe\xed"
    with pytest.raises(LkvmError, match=r"^--dump-dtb /nonexistent/x.dtb: No such file"):
        fdt.dump("/nonexistent/x.dtb", b"")
    fdt.dump(None, b"")  # no --dump-dtb: nothing written
