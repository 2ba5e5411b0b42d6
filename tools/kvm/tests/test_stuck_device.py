"""A device whose backend blocks in the kernel stalls itself and nothing
else, and lkvm still ends in bounded time.

The block is a 9p Tlopen of a host file under a write lease (fcntl
F_SETLEASE) held by a helper process: open(2) waits for the holder to
give the lease up, as a read of a device nobody feeds waits for data.
The holder hears the break (SIGIO), so a test knows the open is waiting,
and ends it by letting go.  No host state is consumed, unlike a read of
/proc/kmsg."""

import importlib
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import pytest

from kvm.devices import STUCK_SECONDS
from tests.fakevm import FakeVm, context
from tests.helpers import LKVM, TINY_TIMEOUT, guest, run_lkvm
from virtio.mock import Driver, MockTransport
from virtio.p9 import wire
from virtio.p9.client import Client
from virtio.p9.wire import Msg
from virtio.pci import VirtioPci
from virtio.rng import Rng

P9 = importlib.import_module("virtio.9p").P9

# Waits that succeed at once on a working lkvm; a failure, not a hang.
WAIT = 10.0
# lkvm abandons a stuck thread after STUCK_SECONDS; the rest is Python
# tearing down, which a loaded 2-CPU host stretches.
STOP_BOUND = STUCK_SECONDS + 4.0

LEASE_HOLDER = """
import fcntl, os, signal, sys
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGIO})
fd = os.open(sys.argv[1], os.O_RDONLY)
try:
    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
except OSError as e:
    sys.exit(f"no lease: {e.strerror}")
print("held", flush=True)
signal.sigwait({signal.SIGIO})  # the kernel's word that an open waits on us
print("breaking", flush=True)
sys.stdin.read()
"""


def read_until(fd: int, marker: bytes, timeout: float = WAIT) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while marker not in data:
        left = deadline - time.monotonic()
        assert left > 0 and select.select([fd], [], [], left)[0], \
            f"no {marker!r} within {timeout} s; got {data!r}"
        chunk = os.read(fd, 4096)
        assert chunk, f"EOF before {marker!r}; got {data!r}"
        data += chunk
    return data


class Lease:
    """A write lease on `path`, held until the block ends."""

    def __init__(self, path: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", LEASE_HOLDER, path],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        if self.proc.stdout.readline() != b"held\n":  # it exited: no leases here
            why = self.proc.communicate(timeout=WAIT)[1].decode().strip()
            self.proc.stdin.close()
            self.proc.stdout.close()
            self.proc.stderr.close()
            pytest.skip(f"{path}: {why}")

    def wait_break(self) -> None:
        """Until an open(2) of the file waits on the lease."""
        read_until(self.proc.stdout.fileno(), b"breaking\n")

    def release(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
        self.proc.wait(WAIT)
        self.proc.stdout.close()
        self.proc.stderr.close()


@contextmanager
def leased(path: str):
    lease = Lease(path)
    try:
        yield lease
    finally:
        lease.release()


@pytest.fixture
def share(tmp_path) -> str:
    root = tmp_path / "share"
    root.mkdir()
    (root / "stall").write_bytes(b"never read\n")
    return str(root)


class Signalled(MockTransport):
    def __init__(self) -> None:
        super().__init__()
        self.used = threading.Event()

    def signal_queue(self, index: int) -> None:
        super().signal_queue(index)
        self.used.set()


def test_a_blocked_9p_open_stalls_only_virtio_9p(share):
    """The 9p device's thread waits in open(2); the rng's is still served,
    and the virtio level's exit abandons the stuck one in bounded time."""
    vm = FakeVm()
    ctx = context(vm)
    p9, rng = P9(vm.mem, share, "t"), Rng(vm.mem)
    doorbells = {}
    for dev in (p9, rng):
        ctx.devices.append(dev)
        doorbells[dev] = VirtioPci(dev, ctx, modern=True).notifiers[0][0]
    (p9q,) = Driver(p9).start()
    (rngq,) = Driver(rng, base=8 << 20).start()
    rng.transport = Signalled()
    c = Client(None)
    for msg in (c.message(Msg.TVERSION, 8192, b"9P2000.L"),
                c.message(Msg.TATTACH, 0, wire.NOFID, b"", b"", 0),
                c.message(Msg.TWALK, 0, 1, [b"stall"]),
                c.message(Msg.TLOPEN, 1, 0)):
        p9q.add([msg], [256])
    rngq.add([], [16])
    stuck = ctx.iothread(p9)
    with leased(os.path.join(share, "stall")) as lease:
        ctx.init()
        try:
            os.eventfd_write(doorbells[p9], 1)   # what KVM does on the guest's kick
            lease.wait_break()
            os.eventfd_write(doorbells[rng], 1)
            assert rng.transport.used.wait(WAIT), "virtio-rng starved by a stuck virtio-9p"
            ((_, written, data),) = rngq.collect()
            assert written == 16 and len(data) == 16
            assert p9q.used_idx() == 3  # Tversion, Tattach, Twalk; Tlopen waits
            start = time.monotonic()
        finally:
            ctx.exit()
        assert time.monotonic() - start < STUCK_SECONDS + 1
        assert stuck.thread.is_alive()
    # Let go: the open returns, and the abandoned thread ends by itself.
    assert stuck.join(WAIT)
    assert p9q.used_idx() == 4
    p9.close()
    vm.close()


@pytest.fixture
def stalled_guest(share, tmp_path, kvm_available, lkvm_home):
    """Start the virtio_9p_stall guest; yields (lkvm process, its stderr fd)
    once the rng answered beside the blocked 9p open."""
    def start(*opts: str) -> subprocess.Popen:
        p = subprocess.Popen([LKVM, "run", "-c", "1", "-m", "16", "--name", "stall", "--rng",
                              "--virtio-transport", "pci-legacy", "--9p", f"{share},t", *opts,
                              guest("virtio_9p_stall")],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        procs.append(p)
        line = read_until(p.stdout.fileno(), b"\n")
        assert re.fullmatch(rb"[0-9a-f]{32}\n", line), line
        return p

    procs: list[subprocess.Popen] = []
    with leased(os.path.join(share, "stall")):
        try:
            yield start
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait(TINY_TIMEOUT)
                p.stdout.close()
                p.stderr.close()


def ends_in_bound(p: subprocess.Popen, since: float) -> bytes:
    try:
        p.wait(STOP_BOUND)
    except subprocess.TimeoutExpired:
        pytest.fail(f"lkvm still running {STOP_BOUND} s after it was told to stop")
    took = time.monotonic() - since
    print(f"lkvm ended {took:.2f} s after the stop")
    err = p.stderr.read()
    assert b"virtio-9p: its I/O thread is stuck in the backend; abandoned" in err, err
    assert b"Traceback" not in err, err
    return err


def test_lkvm_stop_ends_a_guest_whose_9p_is_blocked(stalled_guest):
    p = stalled_guest()
    start = time.monotonic()
    r = run_lkvm("stop", "-n", "stall", timeout=STOP_BOUND)
    assert r.returncode == 0, r.stderr
    # lkvm stop takes far longer to start than the guest to reach its reset.
    assert b"Warning: vCPU 0 did not stop; abandoned" in ends_in_bound(p, start)
    assert p.returncode == 0


def test_sigterm_ends_a_guest_whose_9p_is_blocked(stalled_guest):
    p = stalled_guest()
    start = time.monotonic()
    p.send_signal(signal.SIGTERM)
    ends_in_bound(p, start)
    assert p.returncode == 128 + signal.SIGTERM


def test_a_reboot_ends_a_guest_whose_9p_is_blocked(stalled_guest, tmp_path):
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(1 << 20))
    p = stalled_guest("-d", str(disk))  # with a disk there, it reboots
    ends_in_bound(p, time.monotonic())
    assert p.returncode == 0


def test_lkvm_pause_gives_up_on_a_vcpu_behind_a_stuck_device(stalled_guest):
    """The guest's vCPU waits in its write to the stuck 9p device (the
    guest does nothing else after its line), so it cannot park: pause
    says so in bounded time instead of holding the IPC thread, which
    then still serves lkvm stop."""
    p = stalled_guest()
    r = run_lkvm("pause", "-n", "stall", timeout=STOP_BOUND)
    assert r.returncode != 0 and b"did not pause" in r.stderr, r.stderr
    assert b"Traceback" not in r.stderr
    assert run_lkvm("list").stdout.split()[-1] == b"running"
    start = time.monotonic()
    assert run_lkvm("stop", "-n", "stall", timeout=STOP_BOUND).returncode == 0
    ends_in_bound(p, start)
