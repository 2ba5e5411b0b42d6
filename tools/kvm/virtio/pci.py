"""virtio over PCI (virtio 1.x §4.1): modern (vendor capabilities naming
common, notify, ISR and device config regions of a memory BAR) and legacy
(one I/O BAR of fixed registers).  Either way MSI-X lives in BAR 1 and
INTx is the fallback while the driver leaves MSI-X off.

Queue notifications are ioeventfds serviced by the device's I/O thread;
a write that misses them (an odd width) is serviced on the spot.
"""

from hw.msix import Msix
from hw.pci import PciDevice
from include.uapi import ffi, lib
from kvm.cstruct import to_bytes
from virtio.device import VirtioDevice
from virtio.transport import IrqLatch, Transport

VIRTIO_VENDOR = 0x1AF4            # Red Hat / Qumranet, virtio 1.x §4.1.2
MODERN_DEVICE_BASE = 0x1040       # device id = 0x1040 + virtio id
# Transitional (legacy) PCI device ids, virtio 1.x §4.1.2.3.
LEGACY_DEVICE = {lib.VIRTIO_ID_NET: lib.VIRTIO_TRANS_ID_NET,
                 lib.VIRTIO_ID_BLOCK: lib.VIRTIO_TRANS_ID_BLOCK,
                 lib.VIRTIO_ID_BALLOON: lib.VIRTIO_TRANS_ID_BALLOON,
                 lib.VIRTIO_ID_CONSOLE: lib.VIRTIO_TRANS_ID_CONSOLE,
                 lib.VIRTIO_ID_RNG: lib.VIRTIO_TRANS_ID_RNG,
                 lib.VIRTIO_ID_9P: lib.VIRTIO_TRANS_ID_9P,
                 lib.VIRTIO_ID_SCSI: lib.VIRTIO_TRANS_ID_SCSI}
# A device the spec gives no transitional id (vsock): Linux's legacy
# driver takes any of 0x1000-0x103f and reads the device from the
# subsystem id; this one is kvmtool's for vsock.
LEGACY_OTHER = 0x1012
CLASS_OTHER = 0xFF0000            # "unclassified device", PCI code assignment
ISR_QUEUE = 1                     # virtio 1.x §4.1.4.5: bit 0 = used buffer

# The modern BAR: one page per region; queue q notifies at NOTIFY + 4 q.
COMMON, ISR, DEVICE, NOTIFY = 0x0000, 0x1000, 0x2000, 0x3000
MODERN_BAR_SIZE = 0x4000
NOTIFY_MULTIPLIER = 4
LEGACY_BAR_SIZE = 0x100
MSIX_BAR = 1

COMMON_FIELDS = {f.offset: (name, ffi.sizeof(f.type))
                 for name, f in ffi.typeof("struct virtio_pci_common_cfg").fields}


class VirtioPci(PciDevice, Transport):
    def __init__(self, dev: VirtioDevice, ctx: object, modern: bool) -> None:
        ids = (MODERN_DEVICE_BASE + dev.device_id, 1) if modern else \
            (LEGACY_DEVICE.get(dev.device_id, LEGACY_OTHER), 0)
        super().__init__(VIRTIO_VENDOR, ids[0], CLASS_OTHER, revision=ids[1],
                         subsys_vendor=VIRTIO_VENDOR, subsys_id=dev.device_id)
        Transport.__init__(self, dev)
        self.vm, self.modern = ctx.vm, modern
        dev.modern, dev.transport = modern, self
        self.config_vector = lib.VIRTIO_MSI_NO_VECTOR
        regs = ModernRegs(self) if modern else LegacyRegs(self)
        self.add_bar(MODERN_BAR_SIZE if modern else LEGACY_BAR_SIZE, not modern, regs)
        self.msix = Msix(self, len(dev.queues) + 1, MSIX_BAR, ctx.routing, ctx.vm.irqfd)
        self.msix.changed = dev.interrupts_moved
        self.add_bar(self.msix.size, False, self.msix)
        if modern:
            self._add_modern_caps()
        ctx.pci.add(self)
        self.set_irq(ctx.routing.alloc_line())
        self.isr = IrqLatch(lambda level: ctx.vm.irq_line(self.irq_line, level))
        self.iothread = ctx.iothread(dev)
        self.notifiers: list[tuple[int, tuple | None]] = []
        self._add_notifiers()
        self.on_bar_moved.append(self._bar_moved)

    def _add_modern_caps(self) -> None:
        def cap(kind: int, offset: int, length: int, ctype: str = "struct virtio_pci_cap",
                **extra: int) -> None:
            size = ffi.sizeof(ctype)
            fields = {"cap_len": size, "cfg_type": kind, "bar": 0, "offset": offset,
                      "length": length}
            body = to_bytes(ctype, cap=fields, **extra) if extra else \
                to_bytes(ctype, **fields)
            self.add_capability(lib.PCI_CAP_ID_VNDR, body[2:])
        cap(lib.VIRTIO_PCI_CAP_COMMON_CFG, COMMON, ffi.sizeof("struct virtio_pci_common_cfg"))
        cap(lib.VIRTIO_PCI_CAP_NOTIFY_CFG, NOTIFY, NOTIFY_MULTIPLIER * len(self.dev.queues),
            "struct virtio_pci_notify_cap", notify_off_multiplier=NOTIFY_MULTIPLIER)
        cap(lib.VIRTIO_PCI_CAP_ISR_CFG, ISR, 1)
        cap(lib.VIRTIO_PCI_CAP_DEVICE_CFG, DEVICE, max(len(self.dev.config), 1))

    # Notifications.
    def _notify_points(self, base: int) -> list[tuple]:
        """(addr, len, pio, datamatch) of each queue's doorbell, BAR 0 at `base`."""
        if self.modern:
            return [(base + NOTIFY + NOTIFY_MULTIPLIER * q, 2, False, None)
                    for q in range(len(self.dev.queues))]
        return [(base + lib.VIRTIO_PCI_QUEUE_NOTIFY, 2, True, q)
                for q in range(len(self.dev.queues))]

    def _add_notifiers(self) -> None:
        for q, point in enumerate(self._notify_points(self.bars[0].decoded)):
            efd = self.vm.ioeventfd(*point)
            self.iothread.add(efd, lambda q=q: self.dev.notify(q))
            self.notifiers.append((efd, point))

    @property
    def kicks(self) -> list[int]:
        """Each queue's doorbell, as an ioeventfd (the same across BAR moves)."""
        return [efd for efd, _ in self.notifiers]

    def _bar_moved(self, index: int, old: int | None, new: int | None) -> None:
        """The doorbells follow BAR 0 with the eventfds they had: the I/O
        thread goes on waiting on them, and a guest moving the BAR over
        and over makes lkvm open nothing.  While BAR 0 does not decode,
        KVM has none of them (a point of None)."""
        if index != 0:
            return
        points = self._notify_points(new) if new is not None else [None] * len(self.notifiers)
        moved = []
        for (efd, point), new_point in zip(self.notifiers, points, strict=True):
            if point is not None:
                self.vm.remove_ioeventfd(efd, *point)
            if new_point is not None:
                self.vm.ioeventfd(*new_point, efd=efd)
            moved.append((efd, new_point))
        self.notifiers = moved

    # Interrupts, for the device.
    def signal_queue(self, index: int) -> None:
        if self.msix.enabled:
            self.msix.fire(self.dev.queues[index].vector)
        else:
            self.isr.set(ISR_QUEUE)

    def queue_irqfd(self, index: int) -> int | None:
        """The queue's MSI-X vector's irqfd while the vector is live; under
        INTx the driver reads the ISR, which only lkvm sets."""
        return self.msix.irqfd(self.dev.queues[index].vector)

    def signal_config(self) -> None:
        self.config_changed()
        if self.msix.enabled:
            self.msix.fire(self.config_vector)
        else:
            self.isr.set(lib.VIRTIO_PCI_ISR_CONFIG)

    def write_capability(self, offset: int, size: int, value: int) -> None:
        if offset == self.msix.control and size == 2:
            self.msix.write_control(value)

    def vector(self, value: int) -> int:
        """A vector the driver chose, or NO_VECTOR when there is no such."""
        return value if value < self.msix.vectors else lib.VIRTIO_MSI_NO_VECTOR


class ModernRegs:
    """The memory BAR: common config, ISR, device config, doorbells."""

    def __init__(self, pci: VirtioPci) -> None:
        self.pci, self.dev = pci, pci.dev

    def read(self, offset: int, size: int) -> int:
        region, off = offset & ~0xFFF, offset & 0xFFF
        if region == COMMON:
            field = COMMON_FIELDS.get(off)
            return self._common_read(field[0]) if field and field[1] == size else 0
        if region == ISR:
            return self.pci.isr.take() if off == 0 else 0  # reading acknowledges
        if region == DEVICE:
            return self.dev.read_config(off, size)
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        region, off = offset & ~0xFFF, offset & 0xFFF
        if region == COMMON:
            field = COMMON_FIELDS.get(off)
            if field and field[1] == size:
                with self.dev.lock:
                    self._common_write(field[0], value)
        elif region == DEVICE:
            self.dev.write_config(off, size, value)
        elif region == NOTIFY and off % NOTIFY_MULTIPLIER == 0:
            self.dev.notify(off // NOTIFY_MULTIPLIER)

    def _common_read(self, name: str) -> int:
        pci, dev, q = self.pci, self.dev, self.pci.queue()
        values = {
            "device_feature_select": pci.dfselect,
            "device_feature": pci.device_features_word(),
            "guest_feature_select": pci.gfselect,
            "guest_feature": pci.driver_features_word(),
            "msix_config": pci.config_vector,
            "num_queues": len(dev.queues),
            "device_status": dev.status,
            "config_generation": dev.config_generation,
            "queue_select": pci.qsel,
        }
        if name in values:
            return values[name]
        if q is None:
            return 0
        queue_values = {
            "queue_size": q.size, "queue_msix_vector": q.vector,
            "queue_enable": int(q.enabled), "queue_notify_off": pci.qsel,
            "queue_desc_lo": q.desc_addr & 0xFFFFFFFF, "queue_desc_hi": q.desc_addr >> 32,
            "queue_avail_lo": q.avail_addr & 0xFFFFFFFF, "queue_avail_hi": q.avail_addr >> 32,
            "queue_used_lo": q.used_addr & 0xFFFFFFFF, "queue_used_hi": q.used_addr >> 32,
        }
        return queue_values.get(name, 0)

    def _common_write(self, name: str, value: int) -> None:
        pci, dev, q = self.pci, self.dev, self.pci.queue()
        if name == "device_feature_select":
            pci.dfselect = value
        elif name == "guest_feature_select":
            pci.gfselect = value
        elif name == "guest_feature":
            pci.write_driver_features_word(value)
        elif name == "msix_config":
            pci.config_vector = pci.vector(value)
        elif name == "device_status":
            dev.set_status(value)
        elif name == "queue_select":
            pci.qsel = value
        elif q is not None and not q.enabled:
            self._queue_write(q, name, value)

    def _queue_write(self, q: object, name: str, value: int) -> None:
        half = {"lo": (0xFFFFFFFF << 32, 0), "hi": (0xFFFFFFFF, 32)}
        if name == "queue_size":
            q.size = value
        elif name == "queue_msix_vector":
            q.vector = self.pci.vector(value)
        elif name == "queue_enable" and value == 1:
            self.dev.enable_queue(self.pci.qsel)
        elif name.startswith(("queue_desc_", "queue_avail_", "queue_used_")):
            attr = name[len("queue_"):-3] + "_addr"
            keep, shift = half[name[-2:]]
            setattr(q, attr, getattr(q, attr) & keep | value << shift)


class LegacyRegs:
    """The legacy I/O BAR (virtio 0.9.5): fixed registers, then device
    config at 20, or 24 while MSI-X is on."""

    def __init__(self, pci: VirtioPci) -> None:
        self.pci, self.dev = pci, pci.dev

    def _config_offset(self) -> int:
        return lib.VIRTIO_MSI_QUEUE_VECTOR + 2 if self.pci.msix.enabled \
            else lib.VIRTIO_MSI_CONFIG_VECTOR

    def read(self, offset: int, size: int) -> int:
        pci, dev, q = self.pci, self.dev, self.pci.queue()
        cfg = self._config_offset()
        if offset >= cfg:
            return dev.read_config(offset - cfg, size)
        values = {
            lib.VIRTIO_PCI_HOST_FEATURES: lambda: dev.offered(),
            lib.VIRTIO_PCI_GUEST_FEATURES: lambda: dev.driver_features,
            lib.VIRTIO_PCI_QUEUE_PFN: lambda: q.desc_addr >> lib.VIRTIO_PCI_QUEUE_ADDR_SHIFT
            if q else 0,
            lib.VIRTIO_PCI_QUEUE_NUM: lambda: q.max_size if q else 0,
            lib.VIRTIO_PCI_QUEUE_SEL: lambda: pci.qsel,
            lib.VIRTIO_PCI_STATUS: lambda: dev.status,
            lib.VIRTIO_PCI_ISR: pci.isr.take,  # reading acknowledges
            lib.VIRTIO_MSI_CONFIG_VECTOR: lambda: pci.config_vector,
            lib.VIRTIO_MSI_QUEUE_VECTOR: lambda: q.vector if q else lib.VIRTIO_MSI_NO_VECTOR,
        }
        get = values.get(offset)
        return get() & ((1 << 8 * size) - 1) if get else 0

    def write(self, offset: int, size: int, value: int) -> None:
        pci, dev, q = self.pci, self.dev, self.pci.queue()
        cfg = self._config_offset()
        if offset >= cfg:
            dev.write_config(offset - cfg, size, value)
        elif offset == lib.VIRTIO_PCI_GUEST_FEATURES:
            dev.set_driver_features(value)
        elif offset == lib.VIRTIO_PCI_QUEUE_PFN and q is not None:
            with dev.lock:
                pci.set_legacy_ring(q, value << lib.VIRTIO_PCI_QUEUE_ADDR_SHIFT,
                                    lib.VIRTIO_PCI_VRING_ALIGN)
        elif offset == lib.VIRTIO_PCI_QUEUE_SEL:
            pci.qsel = value
        elif offset == lib.VIRTIO_PCI_QUEUE_NOTIFY:
            dev.notify(value)
        elif offset == lib.VIRTIO_PCI_STATUS:
            dev.set_status(value)
        elif offset == lib.VIRTIO_MSI_CONFIG_VECTOR:
            pci.config_vector = pci.vector(value)
        elif offset == lib.VIRTIO_MSI_QUEUE_VECTOR and q is not None:
            q.vector = pci.vector(value)
