"""virtio over MMIO (virtio 1.x §4.2), version 2 (modern) and version 1
(legacy).  Each device is listed in vm.virtio_mmio for the arch to
describe to the guest: on the kernel command line on x86, which has no
device tree, as DT nodes on arm64."""

from include.uapi import lib
from virtio.device import VirtioDevice
from virtio.transport import IrqLatch, Transport

MAGIC = 0x74726976               # "virt", virtio 1.x §4.2.2
VENDOR = 0x4D564B4C              # "LKVM", as kvmtool reports
REGION_SIZE = 0x200              # registers, then config from 0x100
MODERN_VERSION, LEGACY_VERSION = 2, 1

_ADDR_REGS = {
    lib.VIRTIO_MMIO_QUEUE_DESC_LOW: ("desc_addr", 0), lib.VIRTIO_MMIO_QUEUE_DESC_HIGH:
    ("desc_addr", 32), lib.VIRTIO_MMIO_QUEUE_AVAIL_LOW: ("avail_addr", 0),
    lib.VIRTIO_MMIO_QUEUE_AVAIL_HIGH: ("avail_addr", 32), lib.VIRTIO_MMIO_QUEUE_USED_LOW:
    ("used_addr", 0), lib.VIRTIO_MMIO_QUEUE_USED_HIGH: ("used_addr", 32),
}


class VirtioMmio(Transport):
    def __init__(self, dev: VirtioDevice, ctx: object, base: int, modern: bool) -> None:
        super().__init__(dev)
        self.vm, self.base, self.modern = ctx.vm, base, modern
        dev.modern, dev.transport = modern, self
        self.irq = ctx.routing.alloc_line()
        self.latch = IrqLatch(lambda level: ctx.vm.irq_line(self.irq, level))
        self.page_size = 4096
        self.align = 4096
        ctx.vm.mmio.register(base, REGION_SIZE, self)
        ctx.vm.virtio_mmio.append((base, REGION_SIZE, self.irq))
        self.iothread = ctx.iothread(dev)
        self.kicks: list[int] = []      # each queue's doorbell, as an ioeventfd
        for q in range(len(dev.queues)):
            efd = ctx.vm.ioeventfd(base + lib.VIRTIO_MMIO_QUEUE_NOTIFY, 4, False, q)
            self.iothread.add(efd, lambda q=q: dev.notify(q))
            self.kicks.append(efd)

    # Interrupts: a level line, up while any status bit is.
    def signal_queue(self, index: int) -> None:
        self.latch.set(lib.VIRTIO_MMIO_INT_VRING)

    def queue_irqfd(self, index: int) -> None:
        """None: the driver reads which interrupt it got from the status
        latch, which only lkvm sets."""

    def signal_config(self) -> None:
        self.config_changed()
        self.latch.set(lib.VIRTIO_MMIO_INT_CONFIG)

    def read(self, offset: int, size: int) -> int:
        if offset >= lib.VIRTIO_MMIO_CONFIG:
            return self.dev.read_config(offset - lib.VIRTIO_MMIO_CONFIG, size)
        if size != 4:
            return 0
        dev, q = self.dev, self.queue()
        values = {
            lib.VIRTIO_MMIO_MAGIC_VALUE: lambda: MAGIC,
            lib.VIRTIO_MMIO_VERSION: lambda: MODERN_VERSION if self.modern else LEGACY_VERSION,
            lib.VIRTIO_MMIO_DEVICE_ID: lambda: dev.device_id,
            lib.VIRTIO_MMIO_VENDOR_ID: lambda: VENDOR,
            lib.VIRTIO_MMIO_DEVICE_FEATURES: self.device_features_word,
            lib.VIRTIO_MMIO_QUEUE_NUM_MAX: lambda: q.max_size if q else 0,
            lib.VIRTIO_MMIO_QUEUE_READY: lambda: int(q.enabled) if q else 0,
            lib.VIRTIO_MMIO_QUEUE_PFN: lambda: q.desc_addr // self.page_size if q else 0,
            lib.VIRTIO_MMIO_INTERRUPT_STATUS: lambda: self.latch.bits,
            lib.VIRTIO_MMIO_STATUS: lambda: dev.status,
            lib.VIRTIO_MMIO_CONFIG_GENERATION: lambda: dev.config_generation,
        }
        if offset in _ADDR_REGS and q is not None:
            attr, shift = _ADDR_REGS[offset]
            return getattr(q, attr) >> shift & 0xFFFFFFFF
        get = values.get(offset)
        return get() if get else 0

    def write(self, offset: int, size: int, value: int) -> None:
        if offset >= lib.VIRTIO_MMIO_CONFIG:
            self.dev.write_config(offset - lib.VIRTIO_MMIO_CONFIG, size, value)
            return
        if size != 4:
            return
        with self.dev.lock:
            self._write(offset, value)

    def _write(self, offset: int, value: int) -> None:
        dev, q = self.dev, self.queue()
        if offset == lib.VIRTIO_MMIO_DEVICE_FEATURES_SEL:
            self.dfselect = value
        elif offset == lib.VIRTIO_MMIO_DRIVER_FEATURES_SEL:
            self.gfselect = value
        elif offset == lib.VIRTIO_MMIO_DRIVER_FEATURES:
            self.write_driver_features_word(value)
        elif offset == lib.VIRTIO_MMIO_QUEUE_SEL:
            self.qsel = value
        elif offset == lib.VIRTIO_MMIO_QUEUE_NOTIFY:
            dev.notify(value)
        elif offset == lib.VIRTIO_MMIO_INTERRUPT_ACK:
            self.latch.ack(value)
        elif offset == lib.VIRTIO_MMIO_STATUS:
            dev.set_status(value)
            if value == 0:
                self.latch.ack(~0)
        elif offset == lib.VIRTIO_MMIO_GUEST_PAGE_SIZE:
            self.page_size = value
        elif q is None or q.enabled and offset != lib.VIRTIO_MMIO_QUEUE_READY:
            return
        elif offset == lib.VIRTIO_MMIO_QUEUE_NUM:
            q.size = value
        elif offset == lib.VIRTIO_MMIO_QUEUE_ALIGN:
            self.align = value
        elif offset == lib.VIRTIO_MMIO_QUEUE_PFN:
            self.set_legacy_ring(q, value * self.page_size, self.align)
        elif offset == lib.VIRTIO_MMIO_QUEUE_READY:
            if value and not q.enabled:
                dev.enable_queue(self.qsel)
            elif not value:
                q.reset()
        elif offset in _ADDR_REGS:
            attr, shift = _ADDR_REGS[offset]
            keep = ~(0xFFFFFFFF << shift)
            setattr(q, attr, getattr(q, attr) & keep | value << shift)
