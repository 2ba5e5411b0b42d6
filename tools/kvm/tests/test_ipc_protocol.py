"""The IPC protocol without KVM: ipc/server.py's server in front of a fake
VM, reached by the client module and by lkvm's commands as a user runs
them, and by peers that misbehave."""

import errno
import json
import os
import socket
import threading

import pytest

from ipc import protocol
from ipc import server as ipc_server
from ipc.client import connect
from kvm.errors import LkvmError
from tests.helpers import run_lkvm
from util.home import lkvm_dir


class FakeVcpu:
    def __init__(self, index: int) -> None:
        self.id = index


class FakeArch:
    def __init__(self) -> None:
        self.nmis: list[int] = []

    def dump_vcpu(self, vcpu: FakeVcpu) -> str:
        return f" registers of {vcpu.id}"

    def inject_nmi(self, vcpu: FakeVcpu) -> None:
        self.nmis.append(vcpu.id)


class FakeVm:
    """What the server uses of a Vm; pauses are counted, vCPUs have no
    fds (so no kvmclock)."""

    def __init__(self, cpus: int = 0) -> None:
        self.vcpus = [FakeVcpu(i) for i in range(cpus)]
        self.arch = FakeArch()
        self.paused = self.stopping = False
        self.held = False  # by a debugger (kvm/gdb)
        self.pauses = 0
        self.exit_status: int | None = None

    def pause(self) -> None:
        self.pauses += not self.paused
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    def stop(self, status: int) -> None:
        self.stopping, self.exit_status = True, status


@pytest.fixture
def server(lkvm_home):
    vm = FakeVm()
    keys: list[bytes] = []
    with ipc_server.IpcServer(vm, "fake", sysrq=keys.append) as s:
        s.keys = keys
        yield s


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def fatal(r) -> str:
    """The one line of a failed command: kvmtool's "Fatal:" (die()) or,
    for a command line it cannot read, "Error:" (parse_options())."""
    assert r.returncode != 0
    assert b"Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.decode().splitlines() if "Fatal:" in ln or "Error:" in ln]
    assert len(lines) == 1, r.stderr
    return lines[0]


def raw(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    return s


def test_socket_is_private(server, lkvm_home):
    assert os.stat(lkvm_dir()).st_mode & 0o777 == 0o700
    assert os.stat(server.path).st_mode & 0o777 == 0o600
    assert server.path == os.path.join(lkvm_home, ".lkvm", "fake.sock")


def test_round_trips(server):
    with connect("fake") as g:
        assert g.pid() == os.getpid()
        assert g.vmstate() == protocol.VMSTATE_RUNNING
        assert g.request(protocol.PAUSE) == b""
        assert server.vm.paused and g.vmstate() == protocol.VMSTATE_PAUSED
        assert g.request(protocol.RESUME) == b""
        assert g.vmstate() == protocol.VMSTATE_RUNNING
        assert g.request(protocol.STOP) == b""
    assert server.vm.exit_status == 0


def test_commands_against_the_server(server):
    out = run_lkvm("list", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [{"pid": os.getpid(), "name": "fake", "state": "running"}]
    assert run_lkvm("pause", "-n", "fake").stdout == b"Guest fake paused\n"
    assert run_lkvm("pause", "-a").stdout == b"Guest fake is already paused.\n"
    listing = run_lkvm("list").stdout.decode().splitlines()
    assert listing[0].split() == ["PID", "NAME", "STATE"]
    assert listing[2].split() == [str(os.getpid()), "fake", "paused"]
    assert run_lkvm("resume", "-n", "fake").stdout == b"Guest fake resumed\n"
    assert run_lkvm("resume", "-n", "fake").stdout == b"Guest fake is still running.\n"


def test_debug_parks_dumps_and_resumes(lkvm_home):
    vm = FakeVm(cpus=2)
    keys: list[bytes] = []
    with ipc_server.IpcServer(vm, "dbg", sysrq=keys.append):
        r = run_lkvm("debug", "-n", "dbg", "--dump", "--nmi", "1", "--sysrq", "t")
        assert r.returncode == 0, r.stderr
        out = r.stdout.decode()
        assert "# vCPU #0's dump:" in out and "registers of 1" in out
        assert vm.arch.nmis == [1] and keys == [b"t"]
        assert vm.pauses == 1 and not vm.paused
        # A paused guest stays paused.
        vm.paused = True
        assert run_lkvm("debug", "-n", "dbg", "-d").returncode == 0
        assert vm.paused and vm.pauses == 1
        assert "no vCPU 2: guest 'dbg' has 2" in fatal(run_lkvm("debug", "-n", "dbg", "-m", "2"))
        assert "nothing to do" in fatal(run_lkvm("debug", "-n", "dbg"))


def test_no_balloon_device(server):
    assert "guest 'fake' has no balloon device" in fatal(
        run_lkvm("balloon", "-n", "fake", "--inflate", "64"))
    assert "no balloon device" in fatal(run_lkvm("stat", "-n", "fake", "--memory"))


def test_handlers_given_at_start_serve_the_first_client(lkvm_home):
    """A device's handlers are in place before the socket exists: no
    client can catch the server answering for a device it has."""
    with ipc_server.IpcServer(FakeVm(), "early", handlers={
            protocol.BALLOON: (lambda p: b"", protocol.S32.size)}):
        assert run_lkvm("balloon", "-n", "early", "-i", "1").returncode == 0
        assert "no balloon device" in fatal(run_lkvm("stat", "-n", "early", "-m"))


def test_balloon_and_stat_plumbing(server):
    """What the balloon device will register: the clients' side works."""
    from include.uapi import ffi, lib
    asked: list[bytes] = []
    server.register(protocol.BALLOON, lambda p: asked.append(p) or b"", protocol.S32.size)
    stats = ffi.new("struct virtio_balloon_stat[2]")
    stats[0].tag, stats[0].val = lib.VIRTIO_BALLOON_S_MEMFREE, 1 << 20
    stats[1].tag, stats[1].val = lib.VIRTIO_BALLOON_S_MEMTOT, 1 << 24
    server.register(protocol.STAT, lambda p: bytes(ffi.buffer(stats)), 0)
    assert run_lkvm("balloon", "-n", "fake", "-d", "16").returncode == 0
    assert run_lkvm("balloon", "-n", "fake", "-i", "32").returncode == 0
    assert [protocol.S32.unpack(p)[0] for p in asked] == [-16, 32]
    r = run_lkvm("stat", "-n", "fake", "-m", "--json")
    assert json.loads(r.stdout) == {"name": "fake", "memory": {"free": 1 << 20,
                                                               "total": 1 << 24}}
    assert b"\nThe total amount of memory (in bytes):16777216\n" in \
        run_lkvm("stat", "-a", "-m").stdout


@pytest.mark.parametrize("garbage", [
    b"\xff" * 64,                                        # a length far beyond any message
    protocol.HEADER.pack(99, 0),                         # an unknown type
    protocol.HEADER.pack(protocol.PAUSE, 3) + b"abc",    # a payload PAUSE does not take
    protocol.HEADER.pack(protocol.DEBUG, 2) + b"\1\0",   # a short DEBUG
])
def test_garbage_closes_only_that_connection(server, garbage):
    with connect("fake") as g:
        g.pid()
        before = fd_count()  # the server's end of g included
        with raw(server.path) as bad:
            bad.sendall(garbage)
            reply = b"".join(iter(lambda: bad.recv(4096), b""))  # until the server closes
        if reply:
            status, length = protocol.HEADER.unpack_from(reply)
            assert status == errno.EINVAL and len(reply) == protocol.HEADER.size + length
        assert g.pid() == os.getpid()
        g.pid()  # a second round trip: whatever was pending before the first is handled
        assert fd_count() == before
    assert not server.vm.paused and server.vm.exit_status is None


def test_a_silent_peer_does_not_block_others(server):
    with raw(server.path) as slow:
        slow.sendall(protocol.HEADER.pack(protocol.PID, 0)[:5])
        with connect("fake") as g:
            assert g.vmstate() == protocol.VMSTATE_RUNNING
        slow.sendall(protocol.HEADER.pack(protocol.PID, 0)[5:])
        assert protocol.HEADER.unpack(slow.recv(protocol.HEADER.size)) == (0, 4)


def test_name_in_use(server):
    with pytest.raises(LkvmError, match="the guest name 'fake' is in use"):
        ipc_server.IpcServer(FakeVm(), "fake")
    with connect("fake") as g:
        assert g.pid() == os.getpid()


def stale_socket(path: str) -> None:
    """A socket file nobody listens on: what a killed guest leaves."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(path)


def test_stale_socket_is_replaced(lkvm_home, capfd):
    os.makedirs(lkvm_dir(), exist_ok=True)
    path = os.path.join(lkvm_dir(), "old.sock")
    stale_socket(path)
    with ipc_server.IpcServer(FakeVm(), "old"):
        with connect("old") as g:
            assert g.pid() == os.getpid()
    assert "removed stale socket" in capfd.readouterr().err
    assert not os.path.exists(path)


def test_clients_clean_up_stale_sockets(lkvm_home):
    os.makedirs(lkvm_dir())
    stale_socket(os.path.join(lkvm_dir(), "dead.sock"))
    assert "no running guest named 'dead'" in fatal(run_lkvm("pause", "-n", "dead"))
    assert os.listdir(lkvm_dir()) == []
    stale_socket(os.path.join(lkvm_dir(), "dead.sock"))
    r = run_lkvm("list")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 2
    assert os.listdir(lkvm_dir()) == []


def test_not_a_socket(lkvm_home):
    os.makedirs(lkvm_dir())
    open(os.path.join(lkvm_dir(), "file.sock"), "w").close()
    with pytest.raises(LkvmError, match="exists and is not a socket"):
        ipc_server.IpcServer(FakeVm(), "file")


def test_close_removes_the_socket_and_every_fd(lkvm_home):
    before = fd_count()
    server = ipc_server.IpcServer(FakeVm(), "x")
    g = connect("x")
    g.pid()
    server.close()
    g.wait_closed()  # the server closed our connection too
    g.close()
    assert not server.thread.is_alive()
    assert os.listdir(lkvm_dir()) == []
    assert fd_count() == before


def test_stop_waits_for_the_guest_to_let_go(server):
    """lkvm stop returns when the guest closes its socket; here the fake
    guest's 'exit' is the server closing once the stop is seen."""
    stopped = threading.Event()
    stop = server.vm.stop
    server.vm.stop = lambda status: (stop(status), stopped.set())
    closer = threading.Thread(target=lambda: (stopped.wait(30), server.close()))
    closer.start()
    r = run_lkvm("stop", "-n", "fake")
    closer.join()
    assert r.returncode == 0, r.stderr
    assert server.vm.exit_status == 0


def test_a_guest_that_dies_mid_request(lkvm_home):
    os.makedirs(lkvm_dir())
    path = os.path.join(lkvm_dir(), "dying.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen()

        def die() -> None:
            for _ in range(2):  # the pause command asks VMSTATE first
                conn, _ = listener.accept()
                conn.recv(64)
                conn.close()
        t = threading.Thread(target=die)
        t.start()
        with pytest.raises(LkvmError, match="guest 'dying' went away before answering"):
            connect("dying").pid()
        assert "went away before answering" in fatal(run_lkvm("pause", "-n", "dying"))
        t.join()


def test_bad_input(lkvm_home):
    assert "either -n NAME or -a" in fatal(run_lkvm("pause"))
    assert "either -n NAME or -a" in fatal(run_lkvm("stop", "-a", "-n", "x"))
    assert "no running guests" in fatal(run_lkvm("stop", "-a"))
    assert "no running guest named 'nope'" in fatal(run_lkvm("resume", "-n", "nope"))
    assert "not a usable guest name" in fatal(run_lkvm("debug", "-n", "../x", "-d"))
    assert "--inflate MB or --deflate MB" in fatal(run_lkvm("balloon", "-n", "x"))
    assert "give --memory" in fatal(run_lkvm("stat", "-n", "x"))
    r = run_lkvm("list")
    assert r.returncode == 0 and r.stdout.decode().split() == ["PID", "NAME", "STATE", "-" * 36]


def test_list_rootfs_dirs(lkvm_home):
    os.makedirs(os.path.join(lkvm_dir(), "default"))
    r = run_lkvm("list", "-r")
    assert r.stdout.decode().splitlines()[2].split() == ["default", "shut", "off"]
    assert run_lkvm("list", "-i").stdout.decode().count("\n") == 2


def test_home_unset_falls_back_to_passwd(monkeypatch):
    import pwd
    monkeypatch.delenv("HOME")
    assert lkvm_dir() == os.path.join(pwd.getpwuid(os.getuid()).pw_dir, ".lkvm")


def test_unwritable_home(monkeypatch):
    monkeypatch.setenv("HOME", "/proc/self")
    with pytest.raises(LkvmError, match=r"cannot create /proc/self/.lkvm: .*set HOME"):
        ipc_server.IpcServer(FakeVm(), "x")


def test_socket_path_too_long(monkeypatch):
    monkeypatch.setenv("HOME", "/tmp/" + "h" * 100)
    with pytest.raises(LkvmError, match="longer than a unix socket allows"):
        protocol.socket_path("guest")


# Issue 11 item 6: the server under load and under fd pressure.

BIG = 200   # a request type whose reply is MAX_PAYLOAD bytes


def test_a_hundred_clients_at_once_all_get_answers(server):
    """While the thread is busy, connects queue in the backlog (once 16
    deep, and clients gave up at once with EAGAIN): none may fail."""
    busy, release = threading.Event(), threading.Event()
    server.register(BIG, lambda p: (busy.set(), release.wait(30), b"")[-1], 0)
    guests = []
    with raw(server.path) as blocker:
        blocker.sendall(protocol.HEADER.pack(BIG, 0))
        try:
            assert busy.wait(10)
            for _ in range(100):
                guests.append(connect("fake"))      # all pending at once
        finally:
            release.set()
        try:
            assert [g.pid() for g in guests] == [os.getpid()] * 100
        finally:
            for g in guests:
                g.close()


def test_a_client_that_never_reads_does_not_stall_others(server):
    server.register(BIG, lambda p: b"x" * protocol.MAX_PAYLOAD, 0)
    with raw(server.path) as hog:
        # Far more replies than the socket holds; hog reads none of them.
        hog.setblocking(False)
        sent = 0
        request = protocol.HEADER.pack(BIG, 0) * 64
        for _ in range(400):
            try:
                sent += hog.send(request)
            except BlockingIOError:
                break
        assert sent
        with connect("fake") as g:
            g.sock.settimeout(2)    # the old server stalled everyone for 5 s per reply
            for _ in range(20):
                assert g.pid() == os.getpid()


@pytest.fixture
def few_fds():
    """Lower the soft fd limit to what is open now, so the next fd fails
    with EMFILE; the limit is restored afterwards."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fillers = []

    def exhaust() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE,
                           (max(int(fd) for fd in os.listdir("/proc/self/fd")) + 1, hard))
        try:
            while True:
                fillers.append(os.open(os.devnull, os.O_RDONLY))
        except OSError as e:
            assert e.errno == errno.EMFILE

    yield exhaust
    for fd in fillers:
        os.close(fd)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def cpu_seconds(stat_fd: int) -> float:
    """utime + stime of the task whose /proc stat file is open as stat_fd."""
    fields = os.pread(stat_fd, 4096, 0).decode().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_out_of_fds_a_client_is_told_and_the_thread_does_not_spin(server, few_fds):
    clients = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(3)]
    stat_fd = os.open(f"/proc/self/task/{server.thread.native_id}/stat", os.O_RDONLY)
    try:
        few_fds()
        for c in clients:
            c.settimeout(10)
            c.connect(server.path)      # no fd needed on our side: the server's accept fails
        status, length = protocol.HEADER.unpack(clients[0].recv(protocol.HEADER.size))
        assert status == errno.EMFILE
        assert b"out of file descriptors" in clients[0].recv(length)
        # The others wait in the backlog; the thread sleeps meanwhile.
        # 20 select rounds at the back-off pace is a second: compare with it.
        cpu = cpu_seconds(stat_fd)
        threading.Event().wait(1.0)
        assert cpu_seconds(stat_fd) - cpu < 0.5
    finally:
        os.close(stat_fd)
        for c in clients:
            c.close()


def test_list_shows_a_guest_that_cannot_answer(server):
    def failing(payload: bytes) -> bytes:
        raise protocol.IpcError(errno.EMFILE, "lkvm is out of file descriptors")
    server.register(protocol.PID, failing, 0)
    r = run_lkvm("list", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [{"pid": None, "name": "fake", "state": "unknown"}]
    assert b"out of file descriptors" in r.stderr
