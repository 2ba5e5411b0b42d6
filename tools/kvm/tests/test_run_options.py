"""kvmtool's `run` options lkvm lacked: --dev, --virtio-legacy,
--loglevel and --debug, --debug-iodelay, --nodefaults, --tty, --firmware
and --debug-single-step, each as a user
sees it (the CLI against tiny guests) or as the run configuration holds it."""

import os
import re
import select
import struct
import subprocess
import time

import pytest

from disk.iodelay import IoDelay
from kvm import guestdebug, msg
from kvm.cmd import load_builtin
from kvm.errors import LkvmError
from kvm.kvm import Kvm
from kvm.vm import Vm
from tests.helpers import LKVM, TINY_TIMEOUT, guest, run_lkvm
from x86.arch import X86
from x86.layout import CMDLINE_ADDR

run = load_builtin("run")
HELLO = ("run", "-c", "1", "-m", "16")


def one_fatal_line(r) -> str:
    err = r.stderr.decode()
    assert r.returncode != 0 and "Traceback" not in err, err
    fatal = [line for line in err.splitlines() if "Fatal:" in line]
    assert len(fatal) == 1, err
    return fatal[0]


def bzimage() -> bytes:
    """The smallest image the bzImage loader takes: a setup header and a
    page of protected-mode kernel."""
    image = bytearray(2 * 512 + 0x1000)
    image[0x1F1] = 1                                    # setup_sects
    image[0x201] = 0x6A                                 # header length past the jump
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x206, 0x20F)         # boot protocol 2.15
    struct.pack_into("<I", image, 0x1F4, 0x100)         # syssize
    image[0x211] = 1                                    # LOADED_HIGH
    struct.pack_into("<I", image, 0x238, 2047)          # cmdline_size
    struct.pack_into("<I", image, 0x22C, 0x37FFFFFF)    # initrd_addr_max
    return bytes(image)


@pytest.mark.usefixtures("kvm_available")
def test_dev_opens_the_named_kvm_device():
    r = run_lkvm(*HELLO, "--dev", "/dev/kvm", guest("hello"))
    assert r.returncode == 0 and r.stdout == b"Hello, lkvm!\n", r.stderr
    assert "/dev/null is not a KVM device" in one_fatal_line(
        run_lkvm(*HELLO, "--dev", "/dev/null", guest("hello")))
    assert "cannot open /nonexistent/kvm" in one_fatal_line(
        run_lkvm(*HELLO, "--dev", "/nonexistent/kvm", guest("hello")))


def test_virtio_legacy_is_the_legacy_pci_transport():
    # kvmtool's deprecated spelling of --virtio-transport pci-legacy.
    assert run.configure(["-k", guest("hello"), "-m", "16", "-c", "1",
                          "--virtio-legacy"]).transport == "pci-legacy"
    assert run.configure(["-k", guest("hello"), "-m", "16", "-c", "1"]).transport == "pci"


@pytest.mark.usefixtures("kvm_available")
def test_virtio_legacy_serves_a_legacy_driver():
    """virtio_rng.S drives the legacy PCI layout: it finds its device and
    reads entropy only where --virtio-legacy put one."""
    r = run_lkvm(*HELLO, "--rng", "--virtio-legacy", guest("virtio_rng"))
    assert r.returncode == 0, r.stderr


@pytest.mark.usefixtures("kvm_available")
@pytest.mark.parametrize("args,banner", [
    ((), True),
    (("--loglevel", "info"), True),
    (("--loglevel", "warning"), False),
    (("--loglevel", "error"), False),
])
def test_loglevel_hides_the_info_lines(args, banner):
    r = run_lkvm(*HELLO, *args, guest("hello"))
    assert r.returncode == 0 and r.stdout == b"Hello, lkvm!\n", r.stderr
    err = r.stderr.decode()
    assert ("# lkvm run" in err) == banner
    assert ("KVM session ended normally" in err) == banner


@pytest.mark.usefixtures("kvm_available")
@pytest.mark.parametrize("args", [("--debug",), ("--loglevel", "debug")])
def test_debug_tells_more(args):
    r = run_lkvm(*HELLO, *args, guest("hello"))
    assert r.returncode == 0, r.stderr
    assert "Debug: " in r.stderr.decode()
    assert "Debug: " not in run_lkvm(*HELLO, guest("hello")).stderr.decode()


def test_unknown_loglevel_is_one_line():
    assert "Unknown loglevel: loud" in one_fatal_line(
        run_lkvm(*HELLO, "--loglevel", "loud", guest("hello")))


def test_msg_levels(capsys):
    try:
        msg.set_level("warning")
        msg.info("hidden")
        msg.warning("shown")
        msg.error("always")
        msg.set_level("error")
        msg.warning("hidden")
        msg.error("always")
    finally:
        msg.set_level(msg.DEFAULT_LEVEL)
    assert capsys.readouterr().err.split("\n") == [
        "  Warning: shown", "  Error: always", "  Error: always", ""]
    with pytest.raises(LkvmError, match="Unknown loglevel: x"):
        msg.set_level("x")


class Disk:
    size = 4096

    def __init__(self) -> None:
        self.calls: list[str] = []

    def readv(self, views: list[memoryview], offset: int) -> None:
        self.calls.append("read")

    def writev(self, views: list[memoryview], offset: int) -> None:
        self.calls.append("write")


def test_iodelay_waits_before_each_read_only():
    disk = Disk()
    waits: list[float] = []
    delayed = IoDelay(disk, 25, sleep=lambda s: (waits.append(s), disk.calls.append("wait")))
    delayed.readv([], 0)
    delayed.writev([], 0)
    assert disk.calls == ["wait", "read", "write"] and waits == [0.025]
    assert delayed.size == 4096


def test_iodelay_option(tmp_path):
    image = tmp_path / "disk"
    image.write_bytes(bytes(4096))
    base = ["-k", guest("hello"), "-m", "16", "-c", "1", "-d", str(image)]
    assert run.configure([*base, "--debug-iodelay", "100"]).debug_iodelay == 100
    assert run.configure(base).debug_iodelay == 0
    assert "is negative" in one_fatal_line(
        run_lkvm(*HELLO, "--debug-iodelay", "-5", guest("hello")))


def test_nodefaults_has_no_default_rootfs(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(bzimage())
    base = ["-k", str(kernel), "-m", "16", "-c", "1"]
    assert run.configure(base).root.cmdline is not None     # the default rootfs
    monkeypatch.setenv("HOME", str(tmp_path / "other"))
    cfg = run.configure([*base, "--nodefaults"])
    assert cfg.root.cmdline is None and cfg.shares == ()
    assert not (tmp_path / "other").exists()


@pytest.mark.usefixtures("kvm_available")
@pytest.mark.parametrize("nodefaults", [False, True])
def test_nodefaults_gives_the_kernel_only_the_users_line(tmp_path, monkeypatch, nodefaults):
    monkeypatch.setenv("HOME", str(tmp_path))
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(bzimage())
    cfg = run.configure(["-k", str(kernel), "-m", "16", "-c", "1", "-d", str(kernel),
                         "--boot-mode", "realmode", "-p", "my=line",
                         *(["--nodefaults"] if nodefaults else [])])
    kvm = Kvm()
    arch = X86(cfg.arch)
    vm = Vm(kvm, arch, cfg)
    try:
        arch.load_kernel(vm, cfg, cfg.params)
        line = vm.mem.read(CMDLINE_ADDR, 2048).split(b"\0")[0].decode()
    finally:
        vm.close()
        kvm.close()
    if nodefaults:
        assert line == "my=line"
    else:
        assert line.startswith("noapic") and "console=ttyS0" in line and "my=line" in line


def pty_of(proc: subprocess.Popen, term: int) -> str:
    """The pty lkvm says terminal `term` went to, read off its stderr."""
    line = b""
    deadline = time.monotonic() + TINY_TIMEOUT
    while b"\n" not in line:
        ready, _, _ = select.select([proc.stderr], [], [], deadline - time.monotonic())
        assert ready, f"no pty announced: {line!r}"
        line += os.read(proc.stderr.fileno(), 1)
    match = re.match(rf"  Info: Assigned terminal {term} to pty (/dev/pts/\d+)\n", line.decode())
    assert match, line
    return match[1]


def talk(path: str, send: bytes, want: bytes) -> bytes:
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
    try:
        os.write(fd, send)
        got = b""
        while len(got) < len(want):
            ready, _, _ = select.select([fd], [], [], TINY_TIMEOUT)
            assert ready, f"the guest answered {got!r}"
            got += os.read(fd, 64)
        return got
    finally:
        os.close(fd)


@pytest.mark.usefixtures("kvm_available")
@pytest.mark.parametrize("term,name,send,answer,stdout", [
    # The console: nothing on stdout, all of it on the pty.
    (0, "echo", b"hello, pty\n", b"HELLO, PTY\n", b""),
    # ttyS1: its own pty; the console stays on stdout.
    (1, "tty_echo", b"abc\n", b"ABC\n", b"ttyS1 done\n"),
])
def test_tty_puts_a_terminal_on_a_pty(term, name, send, answer, stdout):
    with subprocess.Popen([LKVM, *HELLO, "--tty", str(term), guest(name)],
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as proc:
        try:
            assert talk(pty_of(proc, term), send, answer) == answer
            out, err = proc.communicate(timeout=TINY_TIMEOUT)
        finally:
            proc.kill()
    assert proc.returncode == 0, err
    assert out == stdout


@pytest.mark.parametrize("arg,message", [
    ("4", "--tty 4: terminals are 0 to 3"),
    ("-1", "--tty -1: terminals are 0 to 3"),
    ("one", "--tty one: not a terminal number"),
])
def test_tty_refuses_what_is_no_terminal(arg, message):
    assert message in one_fatal_line(run_lkvm(*HELLO, "--tty", arg, guest("hello")))


@pytest.mark.usefixtures("kvm_available")
def test_firmware_is_entered_at_the_reset_vector():
    """firmware.S prints only when entered at F000:FFF0, where -f loads its
    last 16 bytes; run as a kernel (a flat binary at 1000:0000) it halts."""
    r = run_lkvm(*HELLO, "-f", guest("firmware"))
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"Hello from firmware\n"
    assert f"# lkvm run --firmware {guest('firmware')} -m 16" in r.stderr.decode()
    r = run_lkvm(*HELLO, guest("firmware"))
    assert r.returncode == 0 and r.stdout == b"", r.stderr


@pytest.mark.usefixtures("kvm_available")
def test_firmware_ignores_an_initrd(tmp_path):
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"x" * 512)
    r = run_lkvm(*HELLO, "--firmware", guest("firmware"), "-i", str(initrd))
    assert r.returncode == 0 and r.stdout == b"Hello from firmware\n", r.stderr
    assert "Warning: Ignoring initrd file when loading a firmware image" in r.stderr.decode()


@pytest.mark.usefixtures("kvm_available")
def test_firmware_refusals(tmp_path):
    big = tmp_path / "big"
    big.write_bytes(bytes(128 * 1024 + 1))
    assert "firmware image is too big to fit in memory (128 KiB" in one_fatal_line(
        run_lkvm(*HELLO, "-f", str(big)))
    assert "Only one of --kernel or --firmware can be specified" in one_fatal_line(
        run_lkvm(*HELLO, "-f", guest("firmware"), "-k", guest("hello")))
    assert "Only one of --kernel or --firmware can be specified" in one_fatal_line(
        run_lkvm(*HELLO, "-f", guest("firmware"), guest("hello")))
    assert "unable to open firmware /nonexistent" in one_fatal_line(
        run_lkvm(*HELLO, "-f", "/nonexistent"))


@pytest.mark.usefixtures("kvm_available")
def test_single_step_dumps_every_instruction():
    """hello.S's first instructions, one stop each: mov $msg,%si (3 bytes),
    mov $0x3f8,%dx (3), cld, lodsb, test %al,%al (2), ...  The guest still
    runs to its end."""
    r = run_lkvm(*HELLO, "--debug-single-step", guest("hello"))
    assert r.returncode == 0 and r.stdout == b"Hello, lkvm!\n", r.stderr[-2000:]
    err = r.stderr.decode()
    rips = [int(m, 16) for m in re.findall(r"^ rip: ([0-9a-f]{16}) ", err, re.M)]
    assert rips[:5] == [0x3, 0x6, 0x7, 0x8, 0xa]
    assert err.count("# vCPU #0 single step:") == len(rips) > 13    # a loop per character
    first = err.split("single step:", 2)[1]
    assert "rsi: 0000000000000016" in first         # msg's offset, just loaded


def test_single_step_needs_the_capability():
    class Vcpu:
        class vm:
            class kvm:
                @staticmethod
                def check_extension(cap: int) -> int:
                    return 0
    with pytest.raises(LkvmError, match="cannot single-step guests"):
        guestdebug.single_step(Vcpu())
