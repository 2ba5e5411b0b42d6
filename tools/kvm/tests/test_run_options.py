"""kvmtool's `run` options lkvm lacked: --dev, --virtio-legacy,
--loglevel and --debug, --debug-iodelay, --nodefaults, --tty, --firmware
--debug-single-step, --vnc (and --sdl, --gtk, --vidmode), each as a user
sees it (the CLI against tiny guests) or as the run configuration holds it."""

import os
import re
import select
import socket
import struct
import subprocess
import time

import pytest

from cli.cmd import load_builtin
from disk.iodelay import IoDelay
from hw.vesa import STRIDE, Framebuffer
from include.uapi import ffi, lib
from kvm import guestdebug, msg
from kvm.errors import KVMTOOL_USAGE, LkvmError
from kvm.kvm import Kvm
from kvm.vm import Vm
from tests.helpers import LKVM, TINY_TIMEOUT, guest, run_lkvm
from ui.vnc import MAX_CLIENTS, VncServer
from x86 import zeropage
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


def one_usage_line(r) -> str:
    """A refusal of the command line itself: kvmtool's 129 and one Error: line."""
    err = r.stderr.decode()
    assert r.returncode == KVMTOOL_USAGE and "Traceback" not in err, err
    errors = [line for line in err.splitlines() if "Error:" in line]
    assert len(errors) == 1, err
    return errors[0]


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


@pytest.mark.usefixtures("kvm_available")
def test_dev_naming_a_fifo_does_not_hang(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert f"{fifo} is not a KVM device" in one_fatal_line(
        run_lkvm(*HELLO, "--dev", str(fifo), guest("hello")))


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
    assert "is negative" in one_usage_line(
        run_lkvm(*HELLO, "--debug-iodelay", "-5", guest("hello")))
    assert "is more than 10000 ms" in one_usage_line(
        run_lkvm(*HELLO, "--debug-iodelay", "10001", guest("hello")))


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


def read_line(pipe) -> bytes:
    """One line off a child's pipe, a byte at a time (nothing read past
    it), within the tiny guests' timeout."""
    line = b""
    deadline = time.monotonic() + TINY_TIMEOUT
    while not line.endswith(b"\n"):
        ready, _, _ = select.select([pipe], [], [], max(deadline - time.monotonic(), 0))
        assert ready, f"no whole line: {line!r}"
        byte = os.read(pipe.fileno(), 1)
        assert byte, f"the pipe ended: {line!r}"
        line += byte
    return line


def pty_of(proc: subprocess.Popen, term: int) -> str:
    """The pty lkvm says terminal `term` went to, read off its stderr."""
    line = read_line(proc.stderr)
    match = re.match(rf"  Info: Assigned terminal {term} to pty (/dev/pts/\d+)\n", line.decode())
    assert match, line
    return match[1]


def talk(fd: int, send: bytes, want: bytes) -> bytes:
    os.write(fd, send)
    got = b""
    while len(got) < len(want):
        ready, _, _ = select.select([fd], [], [], TINY_TIMEOUT)
        assert ready, f"the guest answered {got!r}"
        chunk = os.read(fd, 64)
        assert chunk, f"the pty closed after {got!r}"  # read() gives b"" from then on
        got += chunk
    return got


@pytest.mark.usefixtures("kvm_available")
@pytest.mark.parametrize("term,name,send,answer,stdout", [
    # The console: nothing on stdout, all of it on the pty.
    (0, "echo", b"hello, pty", b"HELLO, PTY", b""),
    # ttyS1: its own pty; the console stays on stdout.
    (1, "tty_echo", b"abc", b"ABC", b"ttyS1 done\n"),
])
def test_tty_puts_a_terminal_on_a_pty(term, name, send, answer, stdout):
    """The guest echoes a line in upper case and ends at its newline.  The
    answer is read before the newline goes: once lkvm ends, the pty goes
    with it, and what the guest wrote last may not have reached the reader."""
    with subprocess.Popen([LKVM, *HELLO, "--tty", str(term), guest(name)],
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as proc:
        try:
            fd = os.open(pty_of(proc, term), os.O_RDWR | os.O_NOCTTY)
            try:
                assert talk(fd, send, answer) == answer
                os.write(fd, b"\n")
            finally:
                os.close(fd)
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
    call puts (3), then puts.inc's mov $0x3f8,%dx (3), cld, lodsb, ...
    (puts follows the 13 bytes of code and the 14 of msg).  The guest
    still runs to its end."""
    r = run_lkvm(*HELLO, "--debug-single-step", guest("hello"))
    assert r.returncode == 0 and r.stdout == b"Hello, lkvm!\n", r.stderr[-2000:]
    err = r.stderr.decode()
    rips = [int(m, 16) for m in re.findall(r"^ rip: ([0-9a-f]{16}) ", err, re.M)]
    puts = 13 + 14
    assert rips[:5] == [0x3, puts, puts + 3, puts + 4, puts + 5]
    assert err.count("# vCPU #0 single step:") == len(rips) > 13    # a loop per character
    first = err.split("single step:", 2)[1]
    assert "rsi: 000000000000000d" in first         # msg's offset, just loaded


def test_single_step_needs_the_capability():
    class Vcpu:
        class vm:
            class kvm:
                @staticmethod
                def check_extension(cap: int) -> int:
                    return 0
    with pytest.raises(LkvmError, match="cannot single-step guests"):
        guestdebug.single_step(Vcpu())


class RfbClient:
    """The few lines of RFB 3.8 a test needs: no security, raw updates."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TINY_TIMEOUT)
        assert self.recv(12) == b"RFB 003.008\n"
        self.sock.sendall(b"RFB 003.008\n")
        count = self.recv(1)[0]
        assert 1 in self.recv(count)                    # security type None offered
        self.sock.sendall(b"\x01")
        assert self.recv(4) == bytes(4)                 # SecurityResult OK
        self.sock.sendall(b"\x01")                      # ClientInit: shared
        self.width, self.height = struct.unpack(">HH", self.recv(4))
        self.pixel_format = self.recv(16)
        self.name = self.recv(struct.unpack(">I", self.recv(4))[0])

    def recv(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            assert chunk, "the server hung up"
            data += chunk
        return data

    def set_pixel_format(self, fmt: bytes) -> None:
        self.sock.sendall(b"\x00\0\0\0" + fmt)

    def update(self, incremental: bool = False) -> tuple[tuple[int, int, int, int], bytes]:
        self.sock.sendall(struct.pack(">BBHHHH", 3, incremental, 0, 0,
                                      self.width, self.height))
        kind, count = struct.unpack(">BxH", self.recv(4))
        assert (kind, count) == (0, 1)
        x, y, w, h, encoding = struct.unpack(">HHHHi", self.recv(12))
        assert encoding == 0                            # raw
        return (x, y, w, h), self.recv(w * h * 4)

    def close(self) -> None:
        self.sock.close()


def vnc_port(proc: subprocess.Popen) -> int:
    line = read_line(proc.stderr)
    match = re.match(r"  Info: VNC server listening on 127\.0\.0\.1:(\d+) ", line.decode())
    assert match, line
    return int(match[1])


@pytest.mark.usefixtures("kvm_available")
def test_vnc_client_reads_what_the_guest_drew():
    with subprocess.Popen([LKVM, *HELLO, "--vnc", guest("vesa")], stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        try:
            port = vnc_port(proc)
            assert read_line(proc.stdout) == b"drawn\n"
            client = RfbClient(port)
            try:
                assert (client.width, client.height) == (640, 480)
                # 32 bpp, depth 24, little-endian, true colour, x8r8g8b8.
                assert client.pixel_format[:13] == struct.pack(
                    ">BBBBHHHBBB", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)
                rect, pixels = client.update()
                assert rect == (0, 0, 640, 480)
                words = struct.unpack(f"<{640 * 480}I", pixels)
                assert words[20 * 640 + 10] == 0xFF0000
                assert words.count(0x336699) == 640 * 480 - 1
                # The client's byte order (big-endian, blue at the top):
                # each pixel's bytes swap places.
                client.set_pixel_format(struct.pack(
                    ">BBBBHHHBBB3x", 32, 24, 1, 1, 255, 255, 255, 0, 8, 16))
                _, swapped = client.update()
                assert struct.unpack_from(">I", swapped, (20 * 640 + 10) * 4)[0] == 0xFF
                assert swapped[:4] == bytes([0x00, 0x99, 0x66, 0x33])
            finally:
                client.close()
            proc.terminate()
            proc.communicate(timeout=TINY_TIMEOUT)
        finally:
            proc.kill()


@pytest.mark.parametrize("args,message", [
    (("--sdl",), "--sdl: lkvm is built without SDL support; use --vnc"),
    (("--gtk",), "--gtk: lkvm is built without GTK support; use --vnc"),
    (("--vnc", "--sdl"), "Only one of --vnc, --sdl or --gtk can be specified"),
    (("--vnc", "--vidmode", "0x301"), "--vidmode 0x301: lkvm's VESA framebuffer has only "
                                      "mode 0x312"),
])
def test_display_refusals(args, message):
    assert message in one_fatal_line(run_lkvm(*HELLO, *args, guest("hello")))


@pytest.mark.usefixtures("kvm_available")
def test_vidmode_without_a_display_is_ignored():
    # As kvmtool: the mode only matters with a framebuffer.
    r = run_lkvm(*HELLO, "--vidmode", "0x301", guest("hello"))
    assert r.returncode == 0 and r.stdout == b"Hello, lkvm!\n", r.stderr


@pytest.fixture
def vnc_server():
    """The server on a framebuffer of host memory, no guest needed."""
    screen = bytearray(STRIDE * 480)
    server = VncServer(Framebuffer(memoryview(screen)), "test")
    server.start()
    yield server, screen
    server.close()
    server.thread.join(TINY_TIMEOUT)


def test_vnc_incremental_update_sends_the_changed_rows(vnc_server):
    server, screen = vnc_server
    client = RfbClient(server.port)
    try:
        assert client.name == b"test"
        client.update()
        struct.pack_into("<I", screen, 100 * STRIDE + 8, 0xABCDEF)
        struct.pack_into("<I", screen, 102 * STRIDE, 0x123456)
        rect, pixels = client.update(incremental=True)
        assert rect == (0, 100, 640, 3)
        assert struct.unpack_from("<I", pixels, 8)[0] == 0xABCDEF
        assert struct.unpack_from("<I", pixels, 2 * STRIDE)[0] == 0x123456
    finally:
        client.close()


@pytest.mark.parametrize("message", [
    # 16 bits per pixel: not served.
    b"\x00\0\0\0" + struct.pack(">BBBBHHHBBB3x", 16, 16, 0, 1, 31, 63, 31, 11, 5, 0),
    # Cut text past the cap: not read into memory.
    b"\x06\0\0\0" + struct.pack(">I", 64 << 20),
    # A message type the stream cannot be followed past.
    b"\x7f",
])
def test_vnc_hangs_up_on_what_it_will_not_take(vnc_server, message):
    server, _ = vnc_server
    client = RfbClient(server.port)
    try:
        client.sock.sendall(message)
        assert client.sock.recv(1) == b""
    finally:
        client.close()


def test_vnc_takes_a_bounded_number_of_clients(vnc_server):
    server, _ = vnc_server
    clients = [RfbClient(server.port) for _ in range(MAX_CLIENTS)]
    try:
        extra = socket.create_connection(("127.0.0.1", server.port), timeout=TINY_TIMEOUT)
        with extra:
            assert extra.recv(12) == b""
    finally:
        for c in clients:
            c.close()


def test_zero_page_describes_the_framebuffer():
    """A kernel entered in 64-bit mode learns of the framebuffer from
    screen_info, as from a boot loader that set VESA mode 0x112."""
    fb = Framebuffer(memoryview(bytearray(STRIDE * 480)))
    hdr = zeropage.header(bzimage())
    page = zeropage.build(hdr, [(0, 16 << 20)], None, (0xD0000000, fb))
    bp = ffi.from_buffer("struct boot_params *", bytearray(page))   # keeps the bytes alive
    si = bp.screen_info
    assert si.orig_video_isVGA == lib.VIDEO_TYPE_VLFB
    assert (si.lfb_base, si.lfb_width, si.lfb_height, si.lfb_depth) == (0xD0000000, 640, 480, 32)
    assert si.lfb_linelength == 2560 and si.lfb_size * 65536 >= 2560 * 480
    assert (si.red_pos, si.green_pos, si.blue_pos) == (16, 8, 0)
    plain = ffi.from_buffer("struct boot_params *",
                            bytearray(zeropage.build(hdr, [(0, 16 << 20)], None)))
    assert plain.screen_info.orig_video_isVGA == 0


def test_sandbox_runs_a_host_script_in_the_rootfs(tmp_path, monkeypatch):
    """The guest init runs the script named by lkvm_sandbox=, through the
    host's / that the rootfs guest sees at /host."""
    monkeypatch.setenv("HOME", str(tmp_path))
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(bzimage())
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    cfg = run.configure(["-k", str(kernel), "-m", "16", "-c", "1", "--sandbox", str(script),
                         "-p", "quiet"])
    assert cfg.params == f"quiet lkvm_sandbox=/host{script}"
    assert cfg.root.rootfs is not None


@pytest.mark.parametrize("extra,message", [
    (("--sandbox", "/nonexistent.sh"), "--sandbox /nonexistent.sh: no such file"),
    (("--sandbox", "{spaced}"), "a path with white space cannot go on the kernel command line"),
    (("--sandbox", "{script}", "-d", "{kernel}"), "--sandbox runs its script in a rootfs guest"),
])
def test_sandbox_refusals(tmp_path, monkeypatch, extra, message):
    monkeypatch.setenv("HOME", str(tmp_path))
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(bzimage())
    (tmp_path / "job.sh").write_text("#!/bin/sh\n")
    (tmp_path / "a job.sh").write_text("#!/bin/sh\n")
    names = {"script": tmp_path / "job.sh", "spaced": tmp_path / "a job.sh", "kernel": kernel}
    argv = ["-k", str(kernel), "-m", "16", "-c", "1", *(a.format(**names) for a in extra)]
    with pytest.raises(LkvmError, match=re.escape(message)):
        run.configure(argv)
