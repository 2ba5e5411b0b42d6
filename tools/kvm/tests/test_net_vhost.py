"""vhost=1 wired as lkvm run wires it, with the vhost-net ioctls recorded
instead of issued (this machine has no /dev/vhost-net; the e2e tier
runs the real one): the memory table, each ring handed over at
DRIVER_OK with the transport's doorbell as its kick, the tap as the
back end, the call eventfd turned into the queue's interrupt, and all
of it given back at reset."""

import os
import socket
import threading

import pytest

from include.uapi import ffi, lib
from kvm.config import Config, Nic
from kvm.errors import LkvmError
from net import vhost
from net.features import GUEST_OFFLOADS, HOST_OFFLOADS
from tests.fakevm import FakeRouting, FakeVm
from virtio import setup
from virtio import vhost as vhost_core
from virtio.mock import Driver
from virtio.net import HDR, HDR_MRG, RX, TX, Net

NAMES = {getattr(lib, n): n for n in (
    "VHOST_SET_OWNER", "VHOST_GET_FEATURES", "VHOST_SET_FEATURES", "VHOST_SET_MEM_TABLE",
    "VHOST_SET_VRING_NUM", "VHOST_SET_VRING_BASE", "VHOST_SET_VRING_ADDR",
    "VHOST_SET_VRING_KICK", "VHOST_SET_VRING_CALL", "VHOST_NET_SET_BACKEND")}
ALL = vhost.VHOST_FEATURES


class TapQueue:
    """A tap queue as vhost sees it: an fd, a vnet header size."""
    offloads = HOST_OFFLOADS | GUEST_OFFLOADS

    def __init__(self) -> None:
        self.ours, self.theirs = socket.socketpair()
        self.ifname = "tap9"
        self.header_sizes: list[int] = []
        self.sent: list[bytes] = []

    def fileno(self) -> int:
        return self.ours.fileno()

    def recv(self) -> list[bytes]:
        return []

    def send(self, frame: bytes) -> None:
        self.sent.append(frame)

    def set_header_size(self, size: int) -> None:
        self.header_sizes.append(size)

    def set_offloads(self, offloads: int) -> None:
        pass

    def enable(self, on: bool) -> None:
        pass

    def close(self) -> None:
        self.ours.close()
        self.theirs.close()


def decode(arg: object) -> object:
    if isinstance(arg, int):
        return arg
    ctype = ffi.typeof(arg)
    if ctype.kind == "array":
        return bytes(ffi.buffer(arg))
    if ctype.item.kind == "struct":
        return {name: getattr(arg, name) for name, _ in ctype.item.fields}
    return arg[0]


@pytest.fixture
def wired(monkeypatch, tmp_path):
    """A NIC with vhost=1 on a fake tap, as setup.attach makes it, and the
    ioctls its vhost-net got."""
    calls: list[tuple[str, object]] = []
    features = {"value": ALL}

    def fake_ioctl(fd: int, request: int, arg: object = 0) -> int:
        if request == lib.VHOST_GET_FEATURES:
            arg[0] = features["value"]
        calls.append((NAMES[request], decode(arg)))
        return 0
    (tmp_path / "vhost-net").write_bytes(b"")
    monkeypatch.setattr(vhost, "VHOST_NET", str(tmp_path / "vhost-net"))
    monkeypatch.setattr(vhost_core, "ioctl", fake_ioctl)
    monkeypatch.setattr(setup, "IrqRouting", lambda vm: FakeRouting())
    taps: list[TapQueue] = []
    monkeypatch.setitem(setup.BACKENDS, "tap", lambda nic: taps.append(TapQueue()) or taps)
    vm = FakeVm()

    def attach() -> tuple:
        nics = (Nic(mode="tap", vhost=True),)
        ctx = setup.attach(vm, Config(name="t", cpus=1, ram_mib=64, nics=nics), print)
        return ctx, ctx.devices[0], taps[0]
    yield attach, calls, features
    vm.close()


def start(dev: Net) -> list:
    pci = dev.transport
    drv = Driver(dev)
    dev.transport = pci         # the mock driver's interrupts are the transport's here
    return drv.start()


def test_the_memory_table_is_the_guests_ram(wired):
    attach, calls, _ = wired
    ctx, dev, tap = attach()
    try:
        assert [c[0] for c in calls] == ["VHOST_SET_OWNER", "VHOST_GET_FEATURES",
                                         "VHOST_SET_MEM_TABLE"]
        table = calls[2][1]
        regions = dev.mem.regions
        assert table["nregions"] == len(regions)
        assert [(t.guest_phys_addr, t.memory_size, t.userspace_addr)
                for t in table["regions"][0:len(regions)]] \
            == [(r.gpa, r.size, r.host) for r in regions]
    finally:
        ctx.exit()


def test_driver_ok_hands_the_rings_doorbells_and_tap_to_vhost(wired):
    attach, calls, _ = wired
    ctx, dev, tap = attach()
    try:
        pci, io = dev.transport, ctx.threads[dev]
        kicks = pci.kicks
        del calls[:]
        rx, tx, ctrl = start(dev)
        names = [c[0] for c in calls]
        assert names[0] == "VHOST_SET_FEATURES"
        assert calls[0][1] == dev.driver_features & ALL
        files = [a for n, a in calls if n in ("VHOST_SET_VRING_KICK", "VHOST_NET_SET_BACKEND")]
        assert files == [{"index": 0, "fd": kicks[0]}, {"index": 1, "fd": kicks[1]},
                         {"index": 0, "fd": tap.fileno()}, {"index": 1, "fd": tap.fileno()}]
        addrs = [a for n, a in calls if n == "VHOST_SET_VRING_ADDR"]
        for q, a in zip((rx, tx), addrs, strict=True):
            assert (a["desc_user_addr"], a["avail_user_addr"], a["used_user_addr"]) == \
                tuple(vhost_core.host_address(dev.mem, x, 1) for x in (q.desc, q.avail, q.used))
        assert [a for n, a in calls if n == "VHOST_SET_VRING_NUM"] == \
            [{"index": 0, "num": rx.size}, {"index": 1, "num": tx.size}]
        assert tap.header_sizes == [HDR_MRG.size]
        # vhost reads the doorbells and the tap now; the control queue is lkvm's.
        assert kicks[0] not in io.handlers and kicks[1] not in io.handlers
        assert tap.fileno() not in io.handlers and kicks[2] in io.handlers
        # vhost's call: the I/O thread raises the queue's interrupt.
        (call,) = [a["fd"] for n, a in calls if n == "VHOST_SET_VRING_CALL" and a["index"] == 1]
        raised = []
        pci.signal_queue = raised.append
        io.handlers[call][0]()
        assert raised == [1]
        del calls[:]
        dev.reset()
        assert ("VHOST_NET_SET_BACKEND", {"index": 0, "fd": -1}) in calls
        assert all(k in io.handlers for k in kicks) and tap.fileno() in io.handlers
        assert call not in io.handlers and tap.header_sizes[-1] == HDR.size
        io.handlers[kicks[1]][0]()      # the doorbell is lkvm's again
    finally:
        ctx.exit()


def test_the_hand_over_waits_for_the_io_threads_handler(wired, monkeypatch):
    """DRIVER_OK while the I/O thread is inside the transmit doorbell's
    handler (its kick taken, the ring not yet read): vhost gets the ring
    base only once that handler has transmitted what it was woken for,
    so no entry is left to neither of them and none is served twice."""
    attach, calls, _ = wired
    ctx, dev, tap = attach()
    pci, io = dev.transport, ctx.threads[dev]
    entered, release, backend_set = threading.Event(), threading.Event(), threading.Event()
    doorbell = io.handlers[pci.kicks[TX]]

    def in_progress() -> None:
        entered.set()
        release.wait(10)
        doorbell[0]()
    io.handlers[pci.kicks[TX]] = (in_progress, doorbell[1])
    record = vhost_core.ioctl

    def watch(fd: int, request: int, arg: object = 0) -> int:
        record(fd, request, arg)
        if request == lib.VHOST_NET_SET_BACKEND and arg.index == TX:
            backend_set.set()
        return 0
    monkeypatch.setattr(vhost_core, "ioctl", watch)
    try:
        drv = Driver(dev)
        dev.transport = pci
        assert drv.negotiate()
        tx = [drv.setup_queue(q) for q in range(3)][TX]
        ctx.init()
        frame = bytes(range(60))
        tx.add([bytes(HDR_MRG.size) + frame], [])
        os.eventfd_write(pci.kicks[TX], 1)      # the guest's notify
        assert entered.wait(10)
        dev.set_status(dev.status | lib.VIRTIO_CONFIG_S_DRIVER_OK)   # on the vCPU
        release.set()
        assert backend_set.wait(10)
        assert tap.sent == [bytes(HDR.size) + frame]     # with the tap's vnet header
        bases = [a["num"] for n, a in calls if n == "VHOST_SET_VRING_BASE" and a["index"] == TX]
        assert bases == [1] == [dev.queues[TX].last_avail]
        assert pci.kicks[TX] not in io.handlers
    finally:
        release.set()
        ctx.exit()


MSI_ADDR = 0xFEE00000       # to APIC 0, physical


def call_fds(calls: list) -> dict[int, int]:
    """Where each ring's call was last pointed."""
    return {a["index"]: a["fd"] for n, a in calls if n == "VHOST_SET_VRING_CALL"}


def test_vhost_raises_live_msix_vectors_through_their_irqfds(wired):
    """A ring whose MSI-X vector is live gets the vector's irqfd as its
    call, routed as the table says, so vhost's interrupts reach the guest
    without lkvm; a masked vector, or MSI-X off, gets lkvm's eventfd, and
    the call follows the driver's masking and unmasking."""
    attach, calls, _ = wired
    ctx, dev, tap = attach()
    pci = dev.transport
    msix, routes, fallback = pci.msix, ctx.routing.msi, dev.vhost[0].fallback
    entry = lib.PCI_MSIX_ENTRY_SIZE

    def message(v: int, data: int) -> None:
        msix.write(entry * v + lib.PCI_MSIX_ENTRY_LOWER_ADDR, 4, MSI_ADDR)
        msix.write(entry * v + lib.PCI_MSIX_ENTRY_DATA, 4, data)

    def mask(v: int, masked: bool) -> None:
        msix.write(entry * v + lib.PCI_MSIX_ENTRY_VECTOR_CTRL, 4,
                   lib.PCI_MSIX_ENTRY_CTRL_MASKBIT if masked else 0)
    try:
        drv = Driver(dev)
        dev.transport = pci
        assert drv.negotiate()
        for q in range(3):
            drv.setup_queue(q)
            dev.queues[q].vector = q
            message(q, 0x40 + q)
        msix.write_control(lib.PCI_MSIX_FLAGS_ENABLE)
        mask(RX, False)                 # the transmit vector stays masked
        del calls[:]
        dev.set_status(dev.status | lib.VIRTIO_CONFIG_S_DRIVER_OK)
        assert call_fds(calls) == {RX: msix.irqfds[RX], TX: fallback[TX]}
        assert routes[msix.gsis[RX]] == (MSI_ADDR, 0x40)
        mask(TX, False)
        assert call_fds(calls)[TX] == msix.irqfds[TX]
        assert routes[msix.gsis[TX]] == (MSI_ADDR, 0x41)
        del calls[:]
        message(RX, 0x50)               # moved while live: the route follows
        assert routes[msix.gsis[RX]] == (MSI_ADDR, 0x50) and call_fds(calls) == {}
        mask(RX, True)
        assert call_fds(calls) == {RX: fallback[RX]}
        msix.write_control(0)           # INTx: the ISR is lkvm's to set
        assert call_fds(calls) == {RX: fallback[RX], TX: fallback[TX]}
        # lkvm's eventfd raises the queue's interrupt as lkvm's own queues do.
        raised = []
        pci.signal_queue = raised.append
        ctx.threads[dev].handlers[fallback[TX]][0]()
        assert raised == [TX]
    finally:
        ctx.exit()


def test_what_vhost_net_lacks_is_not_offered(wired):
    attach, calls, features = wired
    features["value"] = ALL & ~(1 << lib.VIRTIO_RING_F_EVENT_IDX)
    ctx, dev, tap = attach()
    try:
        assert not dev.offered() >> lib.VIRTIO_RING_F_EVENT_IDX & 1
        assert dev.offered() >> lib.VIRTIO_NET_F_MRG_RXBUF & 1
    finally:
        ctx.exit()


def test_a_refused_ring_stops_the_device_and_gives_everything_back(wired, monkeypatch, capsys):
    attach, calls, _ = wired
    ctx, dev, tap = attach()
    real = vhost_core.ioctl

    def refuse(fd: int, request: int, arg: object = 0) -> int:
        if request == lib.VHOST_SET_VRING_ADDR:
            raise OSError(14, os.strerror(14))
        return real(fd, request, arg)
    monkeypatch.setattr(vhost_core, "ioctl", refuse)
    try:
        start(dev)
        io = ctx.threads[dev]
        assert dev.broken and "vhost-net refused the queues: Bad address" in \
            capsys.readouterr().err
        assert all(k in io.handlers for k in dev.transport.kicks) and tap.fileno() in io.handlers
    finally:
        ctx.exit()


def test_a_missing_vhost_net_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(vhost, "VHOST_NET", str(tmp_path / "nothing"))
    with pytest.raises(LkvmError, match="cannot open .*nothing: No such file"):
        vhost.VhostNet(FakeVm().mem, "vhost=1 on tap tap9")
