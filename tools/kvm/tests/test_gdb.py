"""The gdb stub: its framing without a guest, then Debian's gdb in batch
mode and a raw socket against the long64 tiny guest, which runs from a
high mapping so every address gdb uses goes through its page tables."""

import os
import re
import shutil
import socket
import subprocess
from contextlib import contextmanager
from types import SimpleNamespace

import pytest

from arm import gdb as arm_gdb
from include.uapi import lib
from kvm.gdb import target
from kvm.gdb.packet import MAX_PACKET, Event, Reader, checksum, frame
from kvm.gdb.stub import GdbStub
from kvm.gdb.target import HwPoint, Stop, Watch
from tests.helpers import GUESTS, LKVM, TINY_TIMEOUT, guest, run_lkvm
from tests.test_ipc_guests import read_until
from x86 import gdb as x86_gdb
from x86.gdb import REGISTERS, X86Gdb, dr7

GDB = shutil.which("gdb")
ELF = os.path.join(GUESTS, "long64.elf")
HIGH = 0xFFFFFFFF80010000  # where long64's labels run: its high mapping plus its load address

needs_kvm = pytest.mark.usefixtures("kvm_available")
needs_gdb = pytest.mark.skipif(GDB is None, reason="no gdb")


# The framing, without a guest.
def events(*chunks: bytes) -> list[tuple[Event, bytes]]:
    reader = Reader()
    return [(r.event, r.payload) for c in chunks for r in reader.feed(c)]


def test_a_packet_in_pieces_and_escapes():
    assert frame(b"OK") == b"$OK#9a"
    escaped = frame(b"a$b#c}d*")
    assert escaped == b"$a}\x04b}\x03c}]d}\x0a#%02x" % checksum(escaped[1:-3])
    assert events(escaped[:3], escaped[3:9], escaped[9:]) == [(Event.PACKET, b"a$b#c}d*")]
    assert events(b"+$?#3f-\x03") == [(Event.ACK, b""), (Event.PACKET, b"?"),
                                      (Event.NAK, b""), (Event.INTERRUPT, b"")]


def test_hostile_framing_is_refused_and_forgotten():
    assert events(b"$g#00") == [(Event.BAD_CHECKSUM, b"")]
    assert events(b"$g#zz", b"$g#+7") == [(Event.BAD_CHECKSUM, b"")] * 2
    assert events(b"junk$g#67") == [(Event.PACKET, b"g"), (Event.GARBAGE, b"")]
    big = b"$" + b"0" * (MAX_PACKET + 1) + b"#00$?#3f"
    assert events(big) == [(Event.OVERSIZED, b""), (Event.PACKET, b"?")]
    # A packet cut off by a new one: the new one counts.
    assert events(b"$m10,$?#3f") == [(Event.PACKET, b"?"), (Event.GARBAGE, b"")]


def test_debug_registers_encode_each_kind():
    points = [HwPoint(Watch.EXECUTE, 0x1000, 1), HwPoint(Watch.WRITE, 0x2000, 8),
              HwPoint(Watch.READ, 0x3002, 2), HwPoint(Watch.ACCESS, 0x4004, 4)]
    assert dr7(points) == (0x400 | 0x55 | (0b01 | 0b10 << 2) << 20 |
                           (0b11 | 0b01 << 2) << 24 | (0b11 | 0b11 << 2) << 28)
    for bad in (HwPoint(Watch.WRITE, 0x2004, 8), HwPoint(Watch.WRITE, 0x2000, 3),
                HwPoint(Watch.EXECUTE, 0x1000, 4)):
        with pytest.raises(ValueError):
            dr7([bad])


def test_target_description_names_registers_in_order():
    xml = X86Gdb.features["target.xml"].decode()
    names = re.findall(r'<reg name="(\w+)"', xml)
    assert names[:17] == ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
                          *(f"r{i}" for i in range(8, 16)), "rip"]
    assert names == [r.name for r in REGISTERS]
    assert {"fs_base", "gs_base", "k_gs_base", "cr3", "efer", "xmm15"} <= set(names)


def test_every_arch_declares_registers_with_the_cores_reg():
    """x86 and arm64 describe their registers with kvm/gdb's one Reg (x86
    adding where KVM keeps each) and one builder of target.xml."""
    assert all(isinstance(r, target.Reg) for r in [*REGISTERS, *arm_gdb.REGISTERS])
    assert X86Gdb.features["target.xml"] == target.description(
        "i386:x86-64", REGISTERS, x86_gdb.TYPES)


# lkvm with --gdb, against long64.
class Lkvm:
    def __init__(self, proc: subprocess.Popen, port: int) -> None:
        self.proc, self.port = proc, port

    def finish(self) -> tuple[int, bytes, bytes]:
        out, err = self.proc.communicate(timeout=TINY_TIMEOUT)
        return self.proc.returncode, out, err


@contextmanager
def lkvm(*opts: str, cpus: int = 1):
    """lkvm running long64 with the stub on a free port of 127.0.0.1."""
    p = subprocess.Popen([LKVM, "run", "-c", str(cpus), "-m", "16", "--gdb", "127.0.0.1:0",
                          *opts, guest("long64")], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        said = read_until(p.stderr, b"gdb: listening on ")
        while not (port := re.search(rb"listening on [\d.]+:(\d+)\D", said)):
            said += read_until(p.stderr, b"\n")
        yield Lkvm(p, int(port.group(1)))
    finally:
        if p.poll() is None:
            p.kill()
        p.communicate(timeout=TINY_TIMEOUT)


def gdb(port: int, *commands: str) -> str:
    args = [GDB, "-batch", "-nx", "-ex", f"target remote 127.0.0.1:{port}",
            "-ex", f"add-symbol-file {ELF} -o {HIGH:#x}"]
    for c in commands:
        args += ["-ex", c]
    r = subprocess.run(args, capture_output=True, timeout=TINY_TIMEOUT * 2,
                       stdin=subprocess.DEVNULL)
    return (r.stdout + r.stderr).decode()


def symbol(name: str) -> int:
    out = subprocess.run(["nm", ELF], capture_output=True, text=True, check=True).stdout
    return HIGH + int(re.search(rf"^([0-9a-f]+) \w {name}$", out, re.M).group(1), 16)


@needs_kvm
@needs_gdb
def test_gdb_breaks_steps_and_changes_the_guest():
    with lkvm("--gdb-wait") as vm:
        out = gdb(vm.port,
                  "hbreak bp_here", "continue",
                  "info registers rip cr3 efer",
                  "p/x *(long *)&counter",
                  "delete", "break bp_here", "continue",
                  "p/x *(long *)&counter",
                  "stepi", "p/x $pc",
                  "x/s &message",
                  "set {char}&message = 'L'", "set {long}&limit = 3",
                  "delete", "continue")
        status, stdout, stderr = vm.finish()
    assert "Breakpoint 1, 0xffffffff800100aa in bp_here ()" in out, out
    assert re.search(r"rip +0xffffffff800100aa", out) and re.search(r"cr3 +0x30000 ", out)
    assert re.search(r"efer +0x500 ", out), out  # LME and LMA: long mode
    assert "$1 = 0x1" in out and "Breakpoint 2, 0xffffffff800100aa" in out
    assert "$2 = 0x2" in out and f"$3 = {symbol('bp_here') + 7:#x}" in out, out
    assert '<message>:\t"long64 done\\n"' in out, out
    assert "exited normally" in out, out
    assert status == 0 and stdout == b"Long64 done\n", stderr


@needs_kvm
@needs_gdb
def test_threads_are_vcpus_and_detach_lets_the_guest_run_on():
    with lkvm("--gdb-wait", cpus=2) as vm:
        out = gdb(vm.port, "info threads", "thread 2", "p/x $rip", "detach")
        status, stdout, stderr = vm.finish()
    assert re.search(r"\* 1 +Thread 1 .*\n +2 +Thread 2 ", out), out
    assert "Switching to thread 2" in out, out
    assert status == 0 and stdout == b"long64 done\n", stderr
    assert b"detached; the guest runs on" in stderr


@needs_kvm
@needs_gdb
def test_gdb_kill_ends_lkvm():
    with lkvm("--gdb-wait") as vm:
        gdb(vm.port, "kill")
        status, stdout, stderr = vm.finish()
    assert status == 0 and stdout == b"", stderr
    assert b"killed the guest" in stderr


@needs_kvm
def test_a_guest_held_for_gdb_is_paused_for_lkvm(lkvm_home):
    with lkvm("--gdb-wait", "--name", "held") as vm:
        listed = run_lkvm("list")
        run_lkvm("stop", "-n", "held")
        status, stdout, _ = vm.finish()
    assert re.search(rb"held +paused", listed.stdout), listed.stdout
    assert status == 0 and stdout == b""


@needs_kvm
def test_resume_leaves_a_gdb_held_guest_to_gdb(lkvm_home):
    with lkvm("--gdb-wait", "--name", "held") as vm:
        resumed = run_lkvm("resume", "-n", "held")
        listed = run_lkvm("list")
        g = Raw(vm.port)
        assert g(b"?").startswith(b"T05")  # gdb still finds it stopped
        run_lkvm("stop", "-n", "held")
        g.close()
        status, stdout, _ = vm.finish()
    assert resumed.returncode != 0 and resumed.stdout == b"", resumed
    assert resumed.stderr.count(b"\n") == 1 and b"gdb" in resumed.stderr, resumed.stderr
    assert re.search(rb"held +paused", listed.stdout), listed.stdout
    assert status == 0 and stdout == b""


# The protocol by hand: what gdb does not send.
class Raw:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TINY_TIMEOUT)
        self.reader = Reader()
        self.pending: list[bytes] = []
        self.naks = 0

    def reply(self) -> bytes:
        while not self.pending:
            data = self.sock.recv(65536)
            assert data, "the stub closed the connection"
            for r in self.reader.feed(data):
                if r.event == Event.PACKET:
                    self.pending.append(r.payload)
                elif r.event == Event.NAK:
                    self.naks += 1
        return self.pending.pop(0)

    def __call__(self, payload: bytes) -> bytes:
        self.sock.sendall(frame(payload))
        return self.reply()

    def close(self) -> None:
        self.sock.close()


@needs_kvm
def test_hostile_clients_leave_lkvm_running():
    with lkvm("--gdb-wait") as vm:
        a = Raw(vm.port)
        for _ in range(2):
            a.sock.sendall(b"hello\r\n")
            a.sock.sendall(b"$g#00")
            a.sock.sendall(b"$" + b"0" * (MAX_PACKET * 2) + b"#00")
        assert a(b"?") == b"T05thread:1;"
        assert a.naks == 4
        # Other clients are turned away (and said so once); the first goes on.
        for _ in range(2):
            b = socket.create_connection(("127.0.0.1", vm.port), timeout=TINY_TIMEOUT)
            assert b.recv(16) == b""
            b.close()
        assert a(b"qC") == b"QC1" and len(a(b"m0,4")) == 8
        assert a(b"Hg9") == b"E22" and a(b"m,,") == b"E22" and a(b"Pzz=1") == b"E22"
        assert a(b"vUnknown") == b""
        a.sock.sendall(b"$m10,")
        a.close()  # in the middle of a packet: gdb is gone, the guest runs on
        status, stdout, stderr = vm.finish()
    assert status == 0 and stdout == b"long64 done\n", stderr
    for said in (b"bytes outside a packet ignored", b"bad checksum refused",
                 b"bytes refused", b"one gdb at a time", b"in the middle of a packet"):
        assert stderr.count(said) == 1, (said, stderr)
    assert b"Traceback" not in stderr


@needs_kvm
def test_ctrl_c_interrupts_a_running_guest():
    limit, bp = symbol("limit"), symbol("bp_here")
    with lkvm("--gdb-wait") as vm:
        g = Raw(vm.port)
        assert b"qXfer:features:read+" in g(b"qSupported:xmlRegisters=i386")
        assert g(b"QStartNoAckMode") == b"OK"
        xml = g(b"qXfer:features:read:target.xml:0,%x" % MAX_PACKET)
        assert xml.startswith(b"l<?xml") and b"i386:x86-64" in xml
        assert g(b"qfThreadInfo") == b"m1" and g(b"qsThreadInfo") == b"l"
        assert g(b"Z1,%x,1" % bp) == b"OK"
        assert g(b"vCont;c") == b"T05thread:1;hwbreak:;"
        assert g(b"p%x" % X86Gdb.PC) == bp.to_bytes(8, "little").hex().encode()
        # For ever: the count never reaches the limit.
        assert g(b"M%x,8:ffffffffffffff7f" % limit) == b"OK"
        assert g(b"m%x,8" % limit) == b"ffffffffffffff7f"
        assert g(b"z1,%x,1" % bp) == b"OK"
        g.sock.sendall(frame(b"c"))
        assert g(b"g") == b"E16"  # running: gdb must interrupt first
        g.sock.sendall(b"\x03")
        assert g.reply() == b"T02thread:1;"
        assert len(g(b"g")) == sum(X86Gdb.sizes) * 2
        g.sock.sendall(frame(b"k"))
        status, stdout, stderr = vm.finish()
        g.close()
    assert status == 0 and stdout == b"", stderr


def test_bad_gdb_addresses_are_one_line_errors():
    for bad in ("nohost:", "x:99999", "1.2.3.4:port"):
        r = run_lkvm("run", "--gdb", bad, guest("hello"))
        assert r.returncode != 0 and r.stderr.count(b"\n") == 1, r.stderr
        assert b"--gdb" in r.stderr


@needs_kvm
def test_debug_translate_walks_the_tables_the_stub_walks(lkvm_home):
    bp = symbol("bp_here")
    with lkvm("--gdb-wait", "--name", "walk") as vm:
        g = Raw(vm.port)
        early = run_lkvm("debug", "-n", "walk", "--translate", hex(bp))
        assert g(b"Z1,%x,1" % bp) == b"OK" and g(b"c").startswith(b"T05")
        high = run_lkvm("debug", "-n", "walk", "--translate", hex(bp))
        hole = run_lkvm("debug", "-n", "walk", "--translate", "0x40000000")
        bad = run_lkvm("debug", "-n", "walk", "--translate", "0x1" + "0" * 16)
        g.close()
        status, _, _ = vm.finish()
    assert early.returncode == 0 and b"(paging off)" in early.stdout, early
    # The guest's entries, accessed (0x20) and the page dirty (0x40) by now.
    assert high.stdout.decode() == (
        f"vCPU 0 linear {bp:#x}: pml4e 0000000000031023  pdpte 0000000000032023  "
        f"pde 00000000000000e3  physical {bp - HIGH + 0x10000:#x}\n")
    assert b"unmapped (not present)" in hole.stdout, hole
    assert bad.returncode != 0 and bad.stderr.count(b"\n") == 1, bad
    assert status == 0


@needs_kvm
def test_watchpoints_take_the_four_debug_registers():
    counter = symbol("counter")
    with lkvm("--gdb-wait") as vm:
        g = Raw(vm.port)
        for kind in (2, 3, 4):
            assert g(b"Z%d,%x,8" % (kind, counter)) == b"OK"
        assert g(b"Z2,%x,8" % counter) == b"OK"          # the same one again
        assert g(b"Z2,%x,8" % (counter + 4)) == b"E22"   # not aligned to its length
        assert g(b"Z2,%x,3" % counter) == b"E22"         # no such length
        assert g(b"Z1,%x,1" % symbol("bp_here")) == b"OK"
        assert g(b"Z2,%x,4" % counter) == b"E28"         # all four taken
        assert g(b"z3,%x,8" % counter) == b"OK" and g(b"Z2,%x,4" % counter) == b"OK"
        assert g(b"Z9,0,1") == b"E22"
        g.sock.sendall(frame(b"k"))
        status, _, stderr = vm.finish()
        g.close()
    assert status == 0 and b"Traceback" not in stderr


@needs_kvm
def test_a_second_gdb_attaches_after_the_first_detached():
    limit, bp = symbol("limit"), symbol("bp_here")
    with lkvm("--gdb-wait") as vm:
        first = Raw(vm.port)
        assert first(b"Z1,%x,1" % bp) == b"OK" and first(b"c").startswith(b"T05")
        assert first(b"M%x,8:ffffffffffffff7f" % limit) == b"OK"  # count for ever
        assert first(b"D") == b"OK"
        first.close()
        second = Raw(vm.port)  # stops the running guest
        assert second(b"?") == b"T05thread:1;"
        assert second(b"m%x,8" % limit) == b"ffffffffffffff7f"
        second.sock.sendall(frame(b"k"))
        status, _, stderr = vm.finish()
        second.close()
    assert status == 0 and b"Warning" not in stderr, stderr


class TrapTarget:
    """A target whose vCPUs all hit an int3 at TRAP_AT."""
    TRAP_AT = 0x1234
    features: dict = {}

    def __init__(self) -> None:
        self.passed: list[int] = []

    def stop_reason(self, vcpu, hw):
        return Stop("swbreak", self.TRAP_AT)

    def pass_trap(self, vcpu) -> None:
        self.passed.append(vcpu.id)


class TrapVm:
    def __init__(self) -> None:
        self.vcpus = [SimpleNamespace(id=0, exits={lib.KVM_EXIT_INTERNAL_ERROR: None})]
        self.held: set[int] = set()

    def hold(self, ids: set[int]) -> None:
        self.held |= ids


def test_the_guests_own_int3_goes_back_to_it():
    """Linux patches its text with int3: with gdb's breakpoints in, such a
    trap exits to lkvm, and only gdb's own may stop the guest."""
    vm, target = TrapVm(), TrapTarget()
    stub = GdbStub(vm, target, "127.0.0.1", 0, wait=False)
    try:
        trap = vm.vcpus[0].exits[lib.KVM_EXIT_DEBUG]
        trap()
        assert target.passed == [0] and not vm.held
        stub.sw[TrapTarget.TRAP_AT] = (0, b"\x90")
        trap()
        assert target.passed == [0] and vm.held == {0}
    finally:
        stub.exit()
