"""Every command line kvmtool's documentation shows, run as lkvm, against
tiny guests, checking what the user sees: the guest's output and lkvm's
lines, or the one line and exit status of a refusal.

The lines are facts from kvmtool's tree (git.kernel.org/pub/scm/linux/
kernel/git/will/kvmtool.git), written out here with the file each comes
from; a synopsis with alternatives ([-c <cores>], --all|--name) is one row
per alternative.  A placeholder is filled with what a tiny guest can use:
{hello} is the guest that prints "Hello, lkvm!" and resets (the kernel
image), {disk} a raw image, {qcow2} a qcow2 one, {dir} a directory, and
{guest} the name of a running idle guest (started with --balloon).  Rows
lkvm cannot serve yet name who brings the missing piece and are expected
to fail until it lands.
"""

import os
import re
import shutil
import subprocess
from dataclasses import dataclass

import pytest

from kvm.errors import KVMTOOL_DIE, KVMTOOL_USAGE
from tests.helpers import LKVM, TINY_TIMEOUT, guest, run_lkvm
from tests.test_ipc_guests import read_until

pytestmark = pytest.mark.usefixtures("kvm_available", "lkvm_home")

KVMTOOL_1 = "Documentation/kvmtool.1"
IO_TESTING = "Documentation/io-testing.txt"
KERNEL_DEBUGGING = "Documentation/kernel-debugging.txt"
README = "README"

BOOTS = "Hello, lkvm!\n"      # a run line's guest printed this and ended normally


@dataclass(frozen=True)
class Line:
    source: str                 # the kvmtool file that shows it
    documented: str             # the line (or the part of a synopsis) as written there
    argv: tuple[str, ...]       # what runs here
    status: int = 0
    says: str = BOOTS           # run: the guest's output; else in stdout, or the one stderr line
    before: tuple[str, ...] = ()  # a command run on {guest} first
    pending: str = ""           # who brings what lkvm lacks


RUN_SYNOPSIS = ("run -k <kernel-image> [-c <cores>] [-m <MB>] [-p <command line>] [-i <initrd>] "
                "[-d <image file>] [--console serial|virtio|hv] [--dev <node>] [--debug] "
                "[--debug-single-step] [--debug-ioport]")
NO_STATS = "sent no memory statistics within 1 s"   # a tiny guest has no balloon driver
VHOST = os.path.exists("/dev/vhost-net")
VHOST_SCSI = os.path.exists("/dev/vhost-scsi")

LINES = [
    # kvmtool.1, EXAMPLES and the run synopsis, one option at a time.
    Line(KVMTOOL_1, "lkvm run -k bzImage", ("run", "-k", "{hello}")),
    Line(KVMTOOL_1, RUN_SYNOPSIS, ("run", "-k", "{hello}", "-c", "2")),
    Line(KVMTOOL_1, RUN_SYNOPSIS, ("run", "-k", "{hello}", "-m", "64")),
    Line(KVMTOOL_1, RUN_SYNOPSIS, ("run", "-k", "{hello}", "-p", "console=ttyS0")),
    Line(KVMTOOL_1, RUN_SYNOPSIS, ("run", "-k", "{hello}", "-i", "{hello}")),
    Line(KVMTOOL_1, RUN_SYNOPSIS, ("run", "-k", "{hello}", "-d", "{disk}")),
    Line(KVMTOOL_1, "-d, --disk <image file|directory>", ("run", "-k", "{hello}", "-d", "{dir}")),
    Line(KVMTOOL_1, RUN_SYNOPSIS, ("run", "-k", "{hello}", "--console", "serial")),
    Line(KVMTOOL_1, RUN_SYNOPSIS, ("run", "-k", "{hello}", "--console", "virtio")),
    Line(KVMTOOL_1, RUN_SYNOPSIS, ("run", "-k", "{hello}", "--console", "hv"),
         pending="no hv console: kvmtool's is powerpc's spapr hvcons"),
    Line(KVMTOOL_1, RUN_SYNOPSIS, ("run", "-k", "{hello}", "--dev", "/dev/kvm")),
    Line(KVMTOOL_1, RUN_SYNOPSIS, ("run", "-k", "{hello}", "--debug")),
    Line(KVMTOOL_1, RUN_SYNOPSIS, ("run", "-k", "{hello}", "--debug-single-step")),
    Line(KVMTOOL_1, RUN_SYNOPSIS, ("run", "-k", "{hello}", "--debug-ioport")),
    # kvmtool.1, the other commands.
    Line(KVMTOOL_1, "setup <name>", ("setup", "box"),
         says="Your new rootfs named box has been created."),
    Line(KVMTOOL_1, "pause --all|--name <name>", ("pause", "--all"), says="Guest {guest} paused"),
    Line(KVMTOOL_1, "pause --all|--name <name>", ("pause", "--name", "{guest}"),
         says="Guest {guest} paused"),
    Line(KVMTOOL_1, "resume --all|--name <name>", ("resume", "--all"), before=("pause",),
         says="Guest {guest} resumed"),
    Line(KVMTOOL_1, "resume --all|--name <name>", ("resume", "--name", "{guest}"),
         before=("pause",), says="Guest {guest} resumed"),
    Line(KVMTOOL_1, "list [-i] [-r]", ("list",), says="{guest}  "),
    Line(KVMTOOL_1, "list [-i] [-r]", ("list", "-i"), says="{guest}  "),
    Line(KVMTOOL_1, "list [-i] [-r]", ("list", "-r"), says="PID NAME"),
    Line(KVMTOOL_1, "debug --all|--name <guest name> [--dump] [--nmi <n>] [--sysrq <rq>]",
         ("debug", "--all", "--dump"), says="# vCPU #0's dump:"),
    Line(KVMTOOL_1, "debug --all|--name <guest name> [--dump] [--nmi <n>] [--sysrq <rq>]",
         ("debug", "--name", "{guest}", "--dump"), says="# vCPU #0's dump:"),
    Line(KVMTOOL_1, "debug --all|--name <guest name> [--dump] [--nmi <n>] [--sysrq <rq>]",
         ("debug", "--name", "{guest}", "--nmi", "0"), says=""),
    Line(KVMTOOL_1, "debug --all|--name <guest name> [--dump] [--nmi <n>] [--sysrq <rq>]",
         ("debug", "--name", "{guest}", "--sysrq", "t"), says=""),
    Line(KVMTOOL_1, "balloon --name <guest name> --inflate|--deflate <amount in MB>",
         ("balloon", "--name", "{guest}", "--inflate", "20"), says=""),
    Line(KVMTOOL_1, "balloon --name <guest name> --inflate|--deflate <amount in MB>",
         ("balloon", "--name", "{guest}", "--deflate", "20"), says=""),
    Line(KVMTOOL_1, "stop --all|--name <name>", ("stop", "--all"), says=""),
    Line(KVMTOOL_1, "stop --all|--name <name>", ("stop", "--name", "{guest}"), says=""),
    Line(KVMTOOL_1, "stat --all|--name <name> [-m]", ("stat", "--name", "{guest}", "-m"),
         status=KVMTOOL_DIE, says=f"Fatal: guest '{{guest}}' {NO_STATS}"),
    Line(KVMTOOL_1, "stat --all|--name <name> [-m]", ("stat", "--name", "{guest}"),
         status=KVMTOOL_USAGE, says="Error: nothing to show: give --memory"),
    Line(KVMTOOL_1, "sandbox (lkvm run arguments) -- [sandboxed command]",
         ("sandbox", "-k", "{hello}", "--", "true"), status=KVMTOOL_DIE,
         says="Fatal: lkvm sandbox runs its command in a rootfs"),
    # io-testing.txt: how kvmtool's maintainers exercise each device.
    Line(IO_TESTING, "lkvm run ... --balloon", ("run", "-k", "{hello}", "--balloon")),
    Line(IO_TESTING, "lkvm stat -a -m", ("stat", "-a", "-m"), status=KVMTOOL_DIE,
         says=f"Error: guest '{{guest}}' {NO_STATS}"),
    Line(IO_TESTING, "lkvm balloon -n guest-$(pidof lkvm) -i 20",
         ("balloon", "-n", "{guest}", "-i", "20"), says=""),
    Line(IO_TESTING, "lkvm run ... --disk <raw or qcow2 image>",
         ("run", "-k", "{hello}", "--disk", "{disk}")),
    Line(IO_TESTING, "lkvm run ... --disk <raw or qcow2 image>",
         ("run", "-k", "{hello}", "--disk", "{qcow2}")),
    Line(IO_TESTING, "lkvm run ... --console virtio", ("run", "-k", "{hello}", "--console",
                                                        "virtio")),
    Line(IO_TESTING, "lkvm run ... -n mode=tap,tapif=tap0,vhost=1",
         ("run", "-k", "{hello}", "-n", "mode=tap,tapif=tap0,vhost=1"),
         **({} if VHOST else {"status": KVMTOOL_DIE,
                              "says": "Fatal: vhost=1 needs /dev/vhost-net"})),
    Line(IO_TESTING, "lkvm run ... --rng", ("run", "-k", "{hello}", "--rng")),
    Line(IO_TESTING, "lkvm run ... --disk scsi:naa.500140571c9308aa",
         ("run", "-k", "{hello}", "--disk", "scsi:naa.500140571c9308aa"),
         **({} if VHOST_SCSI else {
             "status": KVMTOOL_DIE,
             "says": "Fatal: --disk scsi:naa.500140571c9308aa: a vhost-scsi target needs "
                     "/dev/vhost-scsi, which this host does not have (modprobe vhost_scsi, "
                     "then set the target up in configfs); -d scsi:FILE serves an image "
                     "without it"})),
    Line(IO_TESTING, "lkvm run ... --vsock 12", ("run", "-k", "{hello}", "--vsock", "12")),
    Line(IO_TESTING, "--9p <directory>,<tag>", ("run", "-k", "{hello}", "--9p", "{dir},tag")),
    # kernel-debugging.txt: KGDB over a second serial port on a pty.
    Line(KERNEL_DEBUGGING, "kvm run -k [vmlinuz] -p \"kgdboc=ttyS1 kgdbwait\" --tty 1",
         ("run", "-k", "{hello}", "-p", "kgdboc=ttyS1 kgdbwait", "--tty", "1")),
    # README: the first run a new user types.
    Line(README, "./lkvm run --disk linux-0.2.img --kernel ../../arch/x86/boot/bzImage",
         ("run", "--disk", "{disk}", "--kernel", "{hello}")),
    # An old spelling: kvmtool's own -n parser has had no "virtio" mode
    # since -n took mode=...; lkvm says which word it does not know.
    Line(README, "sudo ./lkvm run --disk linux-0.2.img --kernel ../../arch/x86/boot/bzImage "
         "--network virtio", ("run", "--disk", "{disk}", "--kernel", "{hello}", "--network",
                              "virtio"),
         status=KVMTOOL_DIE, says="Fatal: --network virtio: unknown network parameter 'virtio'"),
]

NEEDS_GUEST = {"pause", "resume", "debug", "balloon", "stop", "stat", "list"}


def row_id(line: Line) -> str:
    return " ".join(line.argv)


def marks(line: Line) -> list:
    return [pytest.mark.xfail(reason=line.pending, strict=True)] if line.pending else []


@pytest.fixture
def files(tmp_path):
    (tmp_path / "disk.img").write_bytes(bytes(1 << 20))
    (tmp_path / "dir").mkdir()
    qcow2 = tmp_path / "disk.qcow2"
    if shutil.which("qemu-img"):
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow2), "1M"],
                       check=True, timeout=TINY_TIMEOUT)
    return {"hello": guest("hello"), "disk": str(tmp_path / "disk.img"),
            "dir": str(tmp_path / "dir"), "qcow2": str(qcow2)}


def idle_guest():
    """An idle guest with a balloon, under lkvm's default name."""
    p = subprocess.Popen([LKVM, "run", "-c", "1", "-m", "16", "--balloon", guest("idle")],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    banner = read_until(p.stderr, b"\n", TINY_TIMEOUT).decode()
    name = re.search(r"--name (\S+)", banner)
    assert name, banner
    return p, name[1]


def run_line(line: Line, values: dict[str, str]) -> subprocess.CompletedProcess:
    argv = [a.format(**values) for a in line.argv]
    if "mode=tap" in " ".join(argv):       # a tap of its own, in a network namespace
        return subprocess.run(["unshare", "-n", LKVM, *argv], capture_output=True,
                              stdin=subprocess.DEVNULL, timeout=TINY_TIMEOUT)
    return run_lkvm(*argv)


@pytest.mark.parametrize("line", [pytest.param(line, id=row_id(line), marks=marks(line))
                                  for line in LINES])
def test_kvmtool_documented_line(line, files):
    values = dict(files)
    p = None
    if line.argv[0] in NEEDS_GUEST:
        p, values["guest"] = idle_guest()
    try:
        for cmd in line.before:
            assert run_lkvm(cmd, "--name", values["guest"]).returncode == 0
        r = run_line(line, values)
    finally:
        if p is not None:
            if p.poll() is None:
                p.kill()
            p.wait(TINY_TIMEOUT)
            p.stdout.close()
            p.stderr.close()
    out, err = r.stdout.decode(), r.stderr.decode()
    says = line.says.format(**values)
    assert "Traceback" not in err, err
    assert r.returncode == line.status, err
    if line.status:
        assert [ln.strip() for ln in err.splitlines() if ln.strip()][0].startswith(says), err
    elif line.argv[0] == "run":
        assert out == says, err
        assert "  # lkvm run -k " in err and "  # KVM session ended normally." in err
    else:
        assert says in out + err, (out, err)
