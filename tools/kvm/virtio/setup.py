"""Which virtio devices a VM gets and on which transport: one table of
device makers, run in order (hvc0 first, then the rng, then the disks in
the order given, so /dev/vda is the first -d, then the SCSI adapter with
the -d scsi: LUNs, then 9p shares and the balloon, then the NICs), and
one table of transports.

Every device gets an I/O thread of its own for its queue notifications:
a backend that blocks (a 9p open waiting on a lease, a read nobody
answers) stalls its own device and no other, and a stop abandons it.

A device's modules (its model, back end, transport) are imported in the
function that makes it, once the configuration asks for one: most guests
have a few devices of the many, and importing every module was most of
lkvm's start-up (issue 19).  The annotations name them as strings."""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Protocol, TypeVar

from hw.pci import PciBus
from ipc.protocol import SOCK_SUFFIX, socket_path
from kvm import msg
from kvm.config import Config, Nic
from kvm.devices import STUCK_SECONDS
from kvm.errors import LkvmError
from kvm.iothread import IoThread, stop_all
from kvm.irq import IrqRouting

if TYPE_CHECKING:
    from disk.core import Disk
    from net.backend import Backend
    from net.vhost import VhostNet
    from virtio.balloon import Balloon
    from virtio.console import Console
    from virtio.device import VirtioDevice
    from virtio.scsi import VhostScsi


def virtio_pci(dev: VirtioDevice, ctx: Context, modern: bool) -> object:
    from virtio.pci import VirtioPci
    return VirtioPci(dev, ctx, modern=modern)


def virtio_mmio(dev: VirtioDevice, ctx: Context, modern: bool) -> object:
    from virtio.mmio import VirtioMmio
    return VirtioMmio(dev, ctx, ctx.next_mmio_base(), modern=modern)


TRANSPORTS = {
    "pci": partial(virtio_pci, modern=True),
    "pci-legacy": partial(virtio_pci, modern=False),
    "mmio": partial(virtio_mmio, modern=True),
    "mmio-legacy": partial(virtio_mmio, modern=False),
}
DISK_FLAGS = {"ro": "readonly", "snapshot": "snapshot", "direct": "direct"}
# kvmtool's -d scsi:WWPN[:TPGT], a vhost-scsi target set up in configfs;
# vhost-scsi's WWPNs are naa., fc. or iqn. names (an iqn. has colons).
VHOST_SCSI_SPEC = re.compile(r"(?P<wwpn>(?:naa|fc|iqn)\.[^,/]+?)(?::(?P<tpgt>\d+))?")
VHOST_SCSI = "/dev/vhost-scsi"


@dataclass
class Context:
    """What transports share: the VM, its irq routes, the PCI bus, and
    each device's I/O thread.  As the registry's virtio level, it starts
    the threads and, at exit, stops them and closes the devices."""
    vm: object
    routing: IrqRouting
    on_error: Callable[[str], None]
    pci: PciBus
    mmio_next: int
    devices: list[VirtioDevice] = field(default_factory=list)
    threads: dict[VirtioDevice, IoThread] = field(default_factory=dict)
    # Devices on a transport of their own (-n trans=), not --virtio-transport's.
    transports: dict[VirtioDevice, str] = field(default_factory=dict)
    console: Console | None = None
    balloon: Balloon | None = None
    name = "virtio"

    def next_mmio_base(self) -> int:
        from virtio.mmio import REGION_SIZE
        base, self.mmio_next = self.mmio_next, self.mmio_next + REGION_SIZE
        return base

    def iothread(self, dev: VirtioDevice) -> IoThread:
        """The thread that serves `dev`'s notifications, its own."""
        if dev not in self.threads:
            self.threads[dev] = IoThread(f"{dev.name}-{len(self.threads)}", self.on_error)
        return self.threads[dev]

    def init(self) -> None:
        for t in self.threads.values():
            t.start()

    def exit(self) -> None:
        """Stop every I/O thread within STUCK_SECONDS; close the devices
        whose thread ended.  One stuck in its backend keeps its device's
        files open: it may still use them, and the process's exit closes them."""
        stuck = stop_all(self.threads.values(), STUCK_SECONDS)
        for dev in self.devices:
            if self.threads.get(dev) in stuck:
                msg.warning(f"virtio-{dev.name}: its I/O thread is stuck in the backend; "
                            "abandoned")
            else:
                dev.close()
        self.threads.clear()
        self.devices.clear()


class Closeable(Protocol):
    def close(self) -> None: ...


T = TypeVar("T")
C = TypeVar("C", bound=Closeable)


def open_all(items: Sequence[T], opener: Callable[[T], C]) -> list[C]:
    """opener(item) for each item; when one fails, the ones opened before
    it are closed before the error goes up."""
    made: list[C] = []
    try:
        for item in items:
            made.append(opener(item))
    except BaseException:
        for thing in made:
            thing.close()
        raise
    return made


def parse_disk(spec: str, kind: str = "") -> Disk:
    from disk.core import open_disk
    path, *flags = spec.split(",")
    unknown = [f for f in flags if f not in DISK_FLAGS]
    if not path or unknown:
        raise LkvmError(f"--disk {kind}{spec}: expected {kind}file[,ro|,snapshot][,direct]")
    return open_disk(path, **{DISK_FLAGS[f]: True for f in flags})


def console(ctx: Context, cfg: Config, out: Callable[[bytes], None]) -> list[VirtioDevice]:
    if cfg.console != "virtio":
        return []
    from virtio.console import Console
    ctx.console = Console(ctx.vm.mem, out)
    return [ctx.console]


def rng(ctx: Context, cfg: Config, out: Callable[[bytes], None]) -> list[VirtioDevice]:
    if not cfg.rng:
        return []
    from virtio.rng import Rng
    return [Rng(ctx.vm.mem)]


def blk(ctx: Context, cfg: Config, out: Callable[[bytes], None]) -> list[VirtioDevice]:
    if not cfg.disks:
        return []
    from disk.iodelay import IoDelay
    from virtio.blk import Blk
    disks = open_all(cfg.disks, parse_disk)
    if cfg.debug_iodelay:
        disks = [IoDelay(disk, cfg.debug_iodelay) for disk in disks]
    return [Blk(ctx.vm.mem, disk, f"lkvm-disk-{i}") for i, disk in enumerate(disks)]


def is_vhost_scsi(spec: str) -> bool:
    """WWPN[:TPGT], unless a file has that name."""
    return VHOST_SCSI_SPEC.fullmatch(spec) is not None and not os.path.exists(spec)


def vhost_scsi(mem: object, spec: str) -> VhostScsi:
    """kvmtool's -d scsi:WWPN[:TPGT]: an adapter of its own for that target."""
    what = f"--disk scsi:{spec}"
    if not os.path.exists(VHOST_SCSI):
        raise LkvmError(f"{what}: a vhost-scsi target needs {VHOST_SCSI}, which "
                        "this host does not have (modprobe vhost_scsi, then set the target "
                        "up in configfs); -d scsi:FILE serves an image without it")
    from virtio.scsi import VhostScsi
    from virtio.vhost import Vhost
    m = VHOST_SCSI_SPEC.fullmatch(spec)
    vhost = Vhost(VHOST_SCSI, what, mem, VhostScsi.vhost_rings)
    try:
        # vhost-scsi's ABI 1 serves every TPG of the WWPN, whatever the tag.
        return VhostScsi(mem, m["wwpn"], int(m["tpgt"] or 0), vhost)
    except ValueError as e:
        vhost.close()
        raise LkvmError(f"{what}: {e}") from None


def scsi(ctx: Context, cfg: Config, out: Callable[[bytes], None]) -> list[VirtioDevice]:
    """One adapter for the image LUNs, in the order of their -d scsi:
    options, and one for each vhost-scsi target; the adapters come in the
    order of their first option, as the guest names disks in the order it
    finds adapters: with no virtio-blk disk, the first -d scsi: is sda,
    the root."""
    if not cfg.scsi:
        return []
    from scsi.sbc import BlockLun
    from scsi.target import MAX_LUNS
    from virtio.scsi import Scsi
    files = [spec for spec in cfg.scsi if not is_vhost_scsi(spec)]
    if len(files) > MAX_LUNS:
        raise LkvmError(f"--disk scsi: at most {MAX_LUNS} LUNs, not {len(files)}")
    luns = open_all(range(len(files)), lambda i: BlockLun(parse_disk(files[i], "scsi:"),
                                                          f"lkvm-scsi-{i}"))
    try:
        targets = open_all([s for s in cfg.scsi if is_vhost_scsi(s)],
                           partial(vhost_scsi, ctx.vm.mem))
    except BaseException:
        for lun in luns:
            lun.close()
        raise
    for target in targets:
        target.serve_on(ctx.iothread(target))
    first = [cfg.scsi.index(files[0])] if luns else []
    adapters = [*([Scsi(ctx.vm.mem, luns)] if luns else []), *targets]
    places = first + [i for i, spec in enumerate(cfg.scsi) if is_vhost_scsi(spec)]
    return [dev for _, dev in sorted(zip(places, adapters, strict=True), key=lambda p: p[0])]


def p9(ctx: Context, cfg: Config, out: Callable[[bytes], None]) -> list[VirtioDevice]:
    if not cfg.shares:
        return []  # and the server stays unloaded: 0.4 s of startup under TCG
    module = importlib.import_module("virtio.9p")  # named as kvmtool's virtio/9p.c
    return [module.P9(ctx.vm.mem, s.path, s.tag or module.DEFAULT_TAG, s.readonly)
            for s in cfg.shares]


def balloon(ctx: Context, cfg: Config, out: Callable[[bytes], None]) -> list[VirtioDevice]:
    if not cfg.balloon:
        return []
    from virtio.balloon import Balloon
    ctx.balloon = Balloon(ctx.vm.mem)
    return [ctx.balloon]


def user_mode(nic: Nic) -> list[Backend]:
    from net.defaults import PREFIX_LEN
    from net.passt import Passt
    return [Passt(nic.guest_ip, nic.host_ip, PREFIX_LEN, nic.host_mac)]


def tap_mode(nic: Nic) -> list[Backend]:
    from net.tap import open_tap
    return open_tap(nic)


# Each mode's back end: one per queue pair.
BACKENDS: dict[str, Callable[[Nic], list[Backend]]] = {"user": user_mode, "tap": tap_mode}


def vhosts(mem: object, backends: list[Backend]) -> list[VhostNet]:
    """A vhost-net per queue pair; none, and no back end, if one fails."""
    from net.vhost import VhostNet
    made: list[VhostNet] = []
    try:
        for backend in backends:
            made.append(VhostNet(mem, f"vhost=1 on tap {backend.ifname}"))
    except BaseException:
        for v in made:
            v.close()
        for backend in backends:
            backend.close()
        raise
    return made


def net(ctx: Context, cfg: Config, out: Callable[[bytes], None]) -> Iterator[VirtioDevice]:
    """One virtio-net per NIC, each handed over as soon as it exists, so
    that a later one failing still ends the back ends started before it."""
    if not cfg.nics:
        return
    from net.mac import parse_mac
    from virtio.net import Net
    for nic in cfg.nics:
        backends = BACKENDS[nic.mode](nic)
        dev = Net(ctx.vm.mem, backends, parse_mac(nic.guest_mac),
                  vhosts(ctx.vm.mem, backends) if nic.vhost else ())
        # Frames arriving are the device's work too, on its own thread.
        for pair, backend in enumerate(backends):
            ctx.iothread(dev).add(backend.fileno(), partial(dev.receive, pair),
                                  counter=False)
        if nic.trans:
            ctx.transports[dev] = nic.trans
        yield dev


def vsock(ctx: Context, cfg: Config, out: Callable[[bytes], None]) -> list[VirtioDevice]:
    """--vsock CID; the userspace back end's unix sockets are at
    --vsock-uds, else beside the IPC socket: ~/.lkvm/<name>.vsock."""
    if cfg.vsock is None:
        return []
    from virtio.vsock import make as make_vsock
    base = socket_path(cfg.name, create_dir=True).removesuffix(SOCK_SUFFIX) + ".vsock"
    dev = make_vsock(ctx.vm.mem, cfg.vsock, cfg.vsock_uds, cfg.vsock_backend, base)
    dev.serve_on(ctx.iothread(dev))
    return [dev]


DEVICES = (console, rng, blk, scsi, p9, balloon, net, vsock)


def attach(vm: object, cfg: Config, console_out: Callable[[bytes], None]) -> Context:
    """Create the devices the configuration asks for on its transport; the
    registry's init starts their threads, its exit ends them."""
    ctx = Context(vm, IrqRouting(vm), lambda why: vm.stop(1, why),
                  PciBus(vm, *vm.arch.PCI_MMIO, vm.arch.PCI_CONFIG), vm.arch.VIRTIO_MMIO_START)
    vm.pci = ctx.pci
    try:
        for make in DEVICES:
            for dev in make(ctx, cfg, console_out):
                ctx.devices.append(dev)
                TRANSPORTS[ctx.transports.get(dev, cfg.transport)](dev, ctx)
    except BaseException:
        ctx.exit()  # the registry never saw the ones made so far
        raise
    return ctx
