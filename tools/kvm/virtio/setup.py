"""Which virtio devices a VM gets and on which transport: one table of
device makers, run in order (hvc0 first, then the rng, then the disks in
the order given, so /dev/vda is the first -d, then 9p shares and the
balloon), and one table of transports."""

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

from disk.raw import RawDisk
from hw.pci import PciBus
from kvm.errors import LkvmError
from kvm.iothread import IoThread
from kvm.irq import IrqRouting
from virtio.balloon import Balloon
from virtio.blk import Blk
from virtio.console import Console
from virtio.device import VirtioDevice
from virtio.mmio import REGION_SIZE, VirtioMmio
from virtio.pci import VirtioPci
from virtio.rng import Rng

TRANSPORTS = {
    "pci": lambda dev, ctx: VirtioPci(dev, ctx, modern=True),
    "pci-legacy": lambda dev, ctx: VirtioPci(dev, ctx, modern=False),
    "mmio": lambda dev, ctx: VirtioMmio(dev, ctx, ctx.next_mmio_base(), modern=True),
    "mmio-legacy": lambda dev, ctx: VirtioMmio(dev, ctx, ctx.next_mmio_base(), modern=False),
}
DISK_FLAGS = {"ro": "readonly", "direct": "direct"}


@dataclass
class Context:
    """What transports share: the VM, its irq routes, the PCI bus and the
    I/O thread.  As the registry's virtio level, it starts the thread and,
    at exit, stops it and closes the devices."""
    vm: object
    routing: IrqRouting
    iothread: IoThread
    pci: PciBus
    mmio_next: int
    devices: list[VirtioDevice] = field(default_factory=list)
    console: Console | None = None
    balloon: Balloon | None = None
    name = "virtio"

    def next_mmio_base(self) -> int:
        base, self.mmio_next = self.mmio_next, self.mmio_next + REGION_SIZE
        return base

    def init(self) -> None:
        self.iothread.start()

    def exit(self) -> None:
        self.iothread.stop()
        for dev in self.devices:
            dev.close()
        self.devices.clear()


def parse_disk(spec: str) -> RawDisk:
    path, *flags = spec.split(",")
    unknown = [f for f in flags if f not in DISK_FLAGS]
    if not path or unknown:
        raise LkvmError(f"--disk {spec}: expected file[,ro][,direct]")
    return RawDisk(path, **{DISK_FLAGS[f]: True for f in flags})


def console(ctx: Context, args: object, out: Callable[[bytes], None]) -> list[VirtioDevice]:
    if args.console != "virtio":
        return []
    ctx.console = Console(ctx.vm.mem, out)
    return [ctx.console]


def rng(ctx: Context, args: object, out: Callable[[bytes], None]) -> list[VirtioDevice]:
    return [Rng(ctx.vm.mem)] if args.rng else []


def blk(ctx: Context, args: object, out: Callable[[bytes], None]) -> list[VirtioDevice]:
    return [Blk(ctx.vm.mem, parse_disk(spec), f"lkvm-disk-{i}")
            for i, spec in enumerate(args.disk)]


def p9(ctx: Context, args: object, out: Callable[[bytes], None]) -> list[VirtioDevice]:
    if not args.p9:
        return []  # and the server stays unloaded: 0.4 s of startup under TCG
    module = importlib.import_module("virtio.9p")  # named as kvmtool's virtio/9p.c
    return [module.P9(ctx.vm.mem, s.path, s.tag or module.DEFAULT_TAG, s.readonly)
            for s in args.p9]


def balloon(ctx: Context, args: object, out: Callable[[bytes], None]) -> list[VirtioDevice]:
    if not args.balloon:
        return []
    ctx.balloon = Balloon(ctx.vm.mem)
    return [ctx.balloon]


DEVICES = (console, rng, blk, p9, balloon)


def attach(vm: object, args: object, console_out: Callable[[bytes], None]) -> Context:
    """Create the devices the options ask for on their transport; the
    registry's init starts their thread, its exit ends it."""
    iothread = IoThread(lambda why: vm.stop(1, why))
    ctx = Context(vm, IrqRouting(vm), iothread, PciBus(vm, *vm.arch.PCI_MMIO),
                  vm.arch.VIRTIO_MMIO_START)
    transport = TRANSPORTS[args.virtio_transport]
    for make in DEVICES:
        for dev in make(ctx, args, console_out):
            ctx.devices.append(dev)
            transport(dev, ctx)
    return ctx
