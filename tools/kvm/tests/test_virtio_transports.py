"""PCI config space, virtio-pci modern and legacy, and virtio-mmio, driven
through the buses as a guest drives them, on a VM without KVM."""

import pytest

from hw.pci import CONFIG_ADDRESS, CONFIG_DATA, IO_BAR_START
from include.uapi import ffi, lib
from tests.fakevm import FakeVm, context
from virtio.mmio import MAGIC, VirtioMmio
from virtio.pci import COMMON, DEVICE, ISR, NOTIFY, VIRTIO_VENDOR, VirtioPci
from virtio.queue import ring_sizes
from virtio.rng import Rng
from x86.arch import X86

S_ACK_DRIVER = lib.VIRTIO_CONFIG_S_ACKNOWLEDGE | lib.VIRTIO_CONFIG_S_DRIVER


@pytest.fixture
def vm():
    vm = FakeVm()
    yield vm
    vm.close()


def cfg_read(vm, slot, reg, size=4):
    vm.pio.write(CONFIG_ADDRESS, 4, 0x80000000 | slot << 11 | reg & 0xFC)
    return vm.pio.read(CONFIG_DATA + (reg & 3), size)


def cfg_write(vm, slot, reg, value, size=4):
    vm.pio.write(CONFIG_ADDRESS, 4, 0x80000000 | slot << 11 | reg & 0xFC)
    vm.pio.write(CONFIG_DATA + (reg & 3), size, value)


def caps(vm, slot):
    out, off = {}, cfg_read(vm, slot, lib.PCI_CAPABILITY_LIST, 1)
    while off:
        kind = cfg_read(vm, slot, off, 1)
        if kind == lib.PCI_CAP_ID_VNDR:
            out[cfg_read(vm, slot, off + 3, 1)] = off
        else:
            out[kind] = off
        off = cfg_read(vm, slot, off + 1, 1)
    return out


def test_host_bridge_and_empty_slots(vm):
    context(vm)
    assert cfg_read(vm, 0, 0) == 0x12378086
    assert cfg_read(vm, 0, lib.PCI_CLASS_REVISION) >> 8 == 0x060000
    assert cfg_read(vm, 5, 0) == 0xFFFFFFFF
    vm.pio.write(CONFIG_ADDRESS, 4, 0x00000000)  # enable bit clear
    assert vm.pio.read(CONFIG_DATA, 4) == 0xFFFFFFFF


def test_bar_sizing_and_moving(vm):
    ctx = context(vm)
    rng = Rng(vm.mem)
    VirtioPci(rng, ctx, modern=True)
    bar0 = cfg_read(vm, 1, lib.PCI_BASE_ADDRESS_0)
    assert bar0 == X86.PCI_MMIO[0]
    cfg_write(vm, 1, lib.PCI_BASE_ADDRESS_0, 0xFFFFFFFF)
    assert cfg_read(vm, 1, lib.PCI_BASE_ADDRESS_0) == (~(0x4000 - 1)) & 0xFFFFFFFF
    cfg_write(vm, 1, lib.PCI_BASE_ADDRESS_0, 0xD8000000)
    assert vm.mmio.find(0xD8000000 + COMMON) is not None and vm.mmio.find(bar0) is None
    assert {a for a, _, _, _ in vm.ioeventfds.values()} == {0xD8000000 + NOTIFY}
    assert cfg_read(vm, 1, lib.PCI_INTERRUPT_LINE, 1) == X86.LEGACY_IRQS[0]
    assert cfg_read(vm, 1, lib.PCI_INTERRUPT_PIN, 1) == 1
    rng.close()


def test_modern_probe_negotiation_and_msix(vm):
    ctx = context(vm)
    rng = Rng(vm.mem)
    VirtioPci(rng, ctx, modern=True)
    assert cfg_read(vm, 1, 0) == (0x1040 + lib.VIRTIO_ID_RNG) << 16 | VIRTIO_VENDOR
    found = caps(vm, 1)
    for kind in (lib.VIRTIO_PCI_CAP_COMMON_CFG, lib.VIRTIO_PCI_CAP_NOTIFY_CFG,
                 lib.VIRTIO_PCI_CAP_ISR_CFG, lib.VIRTIO_PCI_CAP_DEVICE_CFG, lib.PCI_CAP_ID_MSIX):
        assert kind in found
    off = found[lib.VIRTIO_PCI_CAP_COMMON_CFG]
    assert cfg_read(vm, 1, off + ffi.offsetof("struct virtio_pci_cap", "offset")) == COMMON
    base = cfg_read(vm, 1, lib.PCI_BASE_ADDRESS_0)

    def common(field, value=None):
        off = base + COMMON + ffi.offsetof("struct virtio_pci_common_cfg", field)
        size = ffi.sizeof(ffi.typeof("struct virtio_pci_common_cfg").fields[
            [n for n, _ in ffi.typeof("struct virtio_pci_common_cfg").fields].index(field)][1]
            .type)
        if value is None:
            return vm.mmio.read(off, size)
        vm.mmio.write(off, size, value)

    common("device_status", S_ACK_DRIVER)
    common("device_feature_select", 1)
    assert common("device_feature") & 1 << (lib.VIRTIO_F_VERSION_1 - 32)
    # A bit the device never offered: FEATURES_OK does not stick.
    common("guest_feature_select", 1)
    common("guest_feature", 1 << 31)
    common("device_status", S_ACK_DRIVER | lib.VIRTIO_CONFIG_S_FEATURES_OK)
    assert not common("device_status") & lib.VIRTIO_CONFIG_S_FEATURES_OK
    common("device_status", 0)
    common("device_status", S_ACK_DRIVER)
    common("guest_feature_select", 1)
    common("guest_feature", 1)
    common("device_status", S_ACK_DRIVER | lib.VIRTIO_CONFIG_S_FEATURES_OK)
    assert common("device_status") & lib.VIRTIO_CONFIG_S_FEATURES_OK

    # MSI-X on, vector 1 for queue 0, then a queue at guest addresses.
    msix = found[lib.PCI_CAP_ID_MSIX]
    cfg_write(vm, 1, msix + lib.PCI_MSIX_FLAGS, lib.PCI_MSIX_FLAGS_ENABLE, 2)
    table = cfg_read(vm, 1, lib.PCI_BASE_ADDRESS_0 + 4) & ~0xF
    vm.mmio.write(table + 16 + lib.PCI_MSIX_ENTRY_LOWER_ADDR, 4, 0xFEE00000)
    vm.mmio.write(table + 16 + lib.PCI_MSIX_ENTRY_DATA, 4, 0x41)
    common("queue_select", 0)
    common("queue_msix_vector", 1)
    assert common("queue_msix_vector") == 1
    common("queue_msix_vector", 99)
    assert common("queue_msix_vector") == lib.VIRTIO_MSI_NO_VECTOR
    common("queue_msix_vector", 1)
    size = common("queue_size")
    desc, avail, used = 0x10000, 0x20000, 0x30000
    for name, addr in (("desc", desc), ("avail", avail), ("used", used)):
        common(f"queue_{name}_lo", addr)
        common(f"queue_{name}_hi", 0)
    common("queue_enable", 1)
    common("device_status", S_ACK_DRIVER | lib.VIRTIO_CONFIG_S_FEATURES_OK |
           lib.VIRTIO_CONFIG_S_DRIVER_OK)
    vm.mem.write(desc, (0x40000).to_bytes(8, "little") + (16).to_bytes(4, "little") +
                 lib.VRING_DESC_F_WRITE.to_bytes(2, "little") + bytes(2))
    vm.mem.write(avail, bytes(4))
    vm.mem.write(avail + 4, bytes(2))
    vm.mem.write(avail + 2, (1).to_bytes(2, "little"))
    # Masked vector: the interrupt waits in the pending bits.
    vm.mmio.write(base + NOTIFY, 2, 0)
    assert vm.fired() == []
    vm.mmio.write(table + 16 + lib.PCI_MSIX_ENTRY_VECTOR_CTRL, 4, 0)
    assert vm.fired() == [25]
    assert ctx.routing.msi[25] == (0xFEE00000, 0x41)
    assert int.from_bytes(vm.mem.read(used + 2, 2), "little") == 1
    assert ring_sizes(size)[0] == 16 * size
    rng.close()


def test_legacy_intx_and_isr(vm):
    ctx = context(vm)
    rng = Rng(vm.mem)
    VirtioPci(rng, ctx, modern=False)
    assert cfg_read(vm, 1, 0) == 0x1005 << 16 | VIRTIO_VENDOR
    io = cfg_read(vm, 1, lib.PCI_BASE_ADDRESS_0)
    assert io & lib.PCI_BASE_ADDRESS_SPACE_IO and io & ~3 == IO_BAR_START
    io &= ~3
    vm.pio.write(io + lib.VIRTIO_PCI_STATUS, 1, S_ACK_DRIVER)
    assert not vm.pio.read(io + lib.VIRTIO_PCI_HOST_FEATURES, 4) >> lib.VIRTIO_F_VERSION_1 & 1
    vm.pio.write(io + lib.VIRTIO_PCI_GUEST_FEATURES, 4, 0)
    num = vm.pio.read(io + lib.VIRTIO_PCI_QUEUE_NUM, 2)
    vm.mem.write(0x10000, (0x40000).to_bytes(8, "little") + (8).to_bytes(4, "little") +
                 lib.VRING_DESC_F_WRITE.to_bytes(2, "little") + bytes(2))
    avail = 0x10000 + 16 * num
    vm.mem.write(avail, bytes(6))
    vm.mem.write(avail + 2, (1).to_bytes(2, "little"))
    vm.pio.write(io + lib.VIRTIO_PCI_QUEUE_PFN, 4, 0x10)
    vm.pio.write(io + lib.VIRTIO_PCI_STATUS, 1, S_ACK_DRIVER | lib.VIRTIO_CONFIG_S_DRIVER_OK)
    vm.pio.write(io + lib.VIRTIO_PCI_QUEUE_NOTIFY, 2, 0)
    line = X86.LEGACY_IRQS[0]
    assert vm.lines[line] == 1
    assert vm.pio.read(io + lib.VIRTIO_PCI_ISR, 1) == 1
    assert vm.lines[line] == 0 and vm.pio.read(io + lib.VIRTIO_PCI_ISR, 1) == 0
    rng.close()


@pytest.mark.parametrize("modern", [True, False])
def test_mmio_registers_and_description(vm, modern):
    ctx = context(vm)
    rng = Rng(vm.mem)
    VirtioMmio(rng, ctx, X86.VIRTIO_MMIO_START, modern)
    base = X86.VIRTIO_MMIO_START
    assert vm.virtio_mmio == [(base, 0x200, X86.LEGACY_IRQS[0])]
    assert vm.mmio.read(base + lib.VIRTIO_MMIO_MAGIC_VALUE, 4) == MAGIC
    assert vm.mmio.read(base + lib.VIRTIO_MMIO_VERSION, 4) == (2 if modern else 1)
    assert vm.mmio.read(base + lib.VIRTIO_MMIO_DEVICE_ID, 4) == lib.VIRTIO_ID_RNG
    vm.mmio.write(base + lib.VIRTIO_MMIO_STATUS, 4, S_ACK_DRIVER)
    vm.mmio.write(base + lib.VIRTIO_MMIO_DRIVER_FEATURES_SEL, 4, 1)
    vm.mmio.write(base + lib.VIRTIO_MMIO_DRIVER_FEATURES, 4, 1 if modern else 0)
    vm.mmio.write(base + lib.VIRTIO_MMIO_QUEUE_NUM, 4, 8)
    vm.mem.write(0x10000, (0x40000).to_bytes(8, "little") + (8).to_bytes(4, "little") +
                 lib.VRING_DESC_F_WRITE.to_bytes(2, "little") + bytes(2))
    if modern:
        vm.mmio.write(base + lib.VIRTIO_MMIO_STATUS, 4,
                      S_ACK_DRIVER | lib.VIRTIO_CONFIG_S_FEATURES_OK)
        for reg, addr in ((lib.VIRTIO_MMIO_QUEUE_DESC_LOW, 0x10000),
                          (lib.VIRTIO_MMIO_QUEUE_AVAIL_LOW, 0x11000),
                          (lib.VIRTIO_MMIO_QUEUE_USED_LOW, 0x12000)):
            vm.mmio.write(base + reg, 4, addr)
        vm.mmio.write(base + lib.VIRTIO_MMIO_QUEUE_READY, 4, 1)
        avail, used = 0x11000, 0x12000
    else:
        vm.mmio.write(base + lib.VIRTIO_MMIO_GUEST_PAGE_SIZE, 4, 4096)
        vm.mmio.write(base + lib.VIRTIO_MMIO_QUEUE_ALIGN, 4, 4096)
        vm.mmio.write(base + lib.VIRTIO_MMIO_QUEUE_PFN, 4, 0x10)
        avail, used = 0x10000 + 16 * 8, 0x11000
    if modern:
        assert vm.mmio.read(base + lib.VIRTIO_MMIO_QUEUE_READY, 4) == 1
    assert rng.queues[0].enabled
    vm.mem.write(avail, bytes(6))
    vm.mem.write(avail + 2, (1).to_bytes(2, "little"))
    vm.mmio.write(base + lib.VIRTIO_MMIO_QUEUE_NOTIFY, 4, 0)
    assert int.from_bytes(vm.mem.read(used + 2, 2), "little") == 1
    line = X86.LEGACY_IRQS[0]
    assert vm.lines[line] == 1
    assert vm.mmio.read(base + lib.VIRTIO_MMIO_INTERRUPT_STATUS, 4) == \
        lib.VIRTIO_MMIO_INT_VRING
    vm.mmio.write(base + lib.VIRTIO_MMIO_INTERRUPT_ACK, 4, lib.VIRTIO_MMIO_INT_VRING)
    assert vm.lines[line] == 0
    assert vm.mmio.read(base + lib.VIRTIO_MMIO_CONFIG, 4) == 0
    rng.close()


def test_device_config_through_the_modern_bar(vm):
    from virtio.console import Console
    ctx = context(vm)
    con = Console(vm.mem, lambda data: None)
    VirtioPci(con, ctx, modern=True)
    base = cfg_read(vm, 1, lib.PCI_BASE_ADDRESS_0)
    assert vm.mmio.read(base + DEVICE, 2) == 80
    assert vm.mmio.read(base + ISR, 1) == 0
