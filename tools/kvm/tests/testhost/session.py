"""Boot an L1 test host in QEMU (TCG, with the virtualization extensions
emulated) and run commands in it.

On x86 the host's / is shared read-only and overlaid with a tmpfs in L1, so a
command sees the caller's paths (the checkout, Python, the cache) and what it
writes stays in L1's memory; another architecture's L1 gets a root of its own
with lkvm's checkout at the caller's path (hosts.py, l1arm64.py). Files the
host changes during a session must get new names to be seen (see l1init.sh).
Jobs go in over a control port, a line per job; their scripts and output
travel through a writable 9p share.
"""

import contextlib
import os
import select
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from . import cache, l1, liveness, qemu
from .cache import TestHostError
from .hosts import DEFAULT, HOSTS, HostConfig
from .liveness import Liveness

# Variables a command keeps from the caller; the rest of its environment is
# set here, so runs in L1 don't depend on what the caller's shell had.
_KEPT_ENV = ("PATH", "LANG", "LC_ALL", "TERM", "VIRTUAL_ENV", "PYTHONPATH")
# ... except where L1's root is not the caller's /, so its programs are not
# the caller's: there a command finds them where Debian puts them.
_OWN_ROOT_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "TERM": "linux"}


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


class L1Error(TestHostError):
    """L1 failed, or a command in it timed out; the message has L1's console tail."""


class L1Died(L1Error):
    """L1 itself stopped working (no heartbeat, a watchdog report on its
    console, or qemu gone): the command's own fault or not, it never ended."""


TICK = 1.0  # how often a wait asks whether L1 is alive


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.splitlines()[-lines:])


class Session:
    """One L1 boot that runs any number of commands, one at a time.

    Use as a context manager; close() always stops qemu and removes the
    temporary directory. A timed-out command ends the session.
    """

    def __init__(
        self,
        config: HostConfig | None = None,
        *,
        boot_timeout: float = 300.0,
        interactive: bool = False,
        heartbeat_lost: float = liveness.LOST_AFTER,
    ) -> None:
        config = config or HostConfig()
        if config.arch not in HOSTS:
            raise TestHostError(f"no {config.arch} test host: there are {', '.join(HOSTS)}")
        self.config = config
        self._host = HOSTS[config.arch]
        self._qemu = qemu.command(self._host.qemu, self._host.package,
                                  config.qemu or self._host.qemu_source)
        assets = self._host.prepare(config)
        self._own_root = assets.shares["hostfs"] != Path("/")
        self._tmp = Path(tempfile.mkdtemp(prefix="lkvm-l1-"))
        self._share = self._tmp / "share"
        self._share.mkdir()
        self._console = self._tmp / "console.log"
        self._liveness = Liveness(self._console, heartbeat_lost)
        self._jobs = 0
        self._buf = b""
        self._conn: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._pidfd = -1
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._interactive = interactive
        try:
            self._boot(assets, boot_timeout)
        except BaseException:
            self.close()
            raise

    def _boot(self, assets: l1.L1Assets, timeout: float) -> None:
        start = time.monotonic()
        ctl = self._tmp / "ctl.sock"
        self._listener.bind(str(ctl))
        self._listener.listen(1)
        host, cfg = self._host, self.config
        virtfs = "local,security_model=none,multidevs=remap"
        params = [
            f"console={host.console}", "panic=-1", "quiet", "mitigations=off",
            f"testhost_ctl={host.control_dev}", *assets.params,
        ]  # fmt: skip
        shares = [f"{virtfs},path={path},mount_tag={tag},readonly=on"
                  for tag, path in assets.shares.items()]  # fmt: skip
        shares.append(f"{virtfs},path={self._share},mount_tag=results")
        # setpriv: qemu must not outlive a test run that was killed.
        cmd = [
            "setpriv", "--pdeathsig", "KILL",
            *self._qemu, "-accel", f"tcg,thread={cfg.tcg_thread}", *host.machine,
            "-m", cfg.mem or host.mem, "-smp", str(cfg.cpus or host.cpus),
            "-nodefaults", "-no-reboot", "-display", "none",
            "-kernel", str(assets.kernel), "-initrd", str(assets.initrd),
            "-append", " ".join(params),
            *self._console_args(),
            "-chardev", f"socket,id=ctl,path={ctl}", *host.control,
            *(arg for share in shares for arg in ("-virtfs", share)),
        ]  # fmt: skip
        stdin = None if self._interactive else subprocess.DEVNULL
        with open(self._tmp / "qemu.err", "wb") as err:
            self._proc = subprocess.Popen(
                cmd, stdin=stdin, stdout=None if self._interactive else subprocess.DEVNULL,
                stderr=err,
            )
        self._pidfd = os.pidfd_open(self._proc.pid)
        deadline = start + timeout
        self._wait(self._listener, deadline, "qemu to connect")
        self._conn, _ = self._listener.accept()
        while self._readline(deadline, "L1 to boot") != "READY":
            pass
        self._liveness.beat()  # the heartbeat starts with READY
        self.boot_seconds = time.monotonic() - start

    def _console_args(self) -> list[str]:
        """L1's console: a log file, or the caller's terminal when a person
        drives it (signal=off: Ctrl-C belongs to the guest)."""
        if self._interactive:
            return ["-chardev", "stdio,id=con,signal=off", "-serial", "chardev:con"]
        return ["-serial", f"file:{self._console}"]

    def _wait(self, sock: socket.socket, deadline: float, what: str) -> None:
        """Block until `sock` is readable; fail if time runs out first, or at
        once when L1 dies (see liveness.py).

        L1 is judged only when nothing is left to read: between two jobs
        nobody reads its beats, and those queued on the socket are what
        says it lived on meanwhile."""
        while True:
            remaining = deadline - time.monotonic()
            ready = select.select([sock, self._pidfd], [], [],
                                  min(max(remaining, 0), TICK))[0]
            if self._pidfd in ready:
                status = self._proc.wait() if self._proc else None
                raise L1Died(
                    f"qemu exited with status {status} while waiting for {what}\n"
                    f"{self.console()}"
                )
            if ready:
                return
            if why := self._liveness.why_dead():
                raise L1Died(f"{why} while waiting for {what}\n{self.console()}")
            if remaining <= 0:
                raise L1Error(f"timed out waiting for {what}\n{self.console()}")

    def _readline(self, deadline: float, what: str) -> str:
        """The next line from L1's control port; heartbeats are taken here."""
        assert self._conn is not None
        while True:
            while b"\n" not in self._buf:
                self._wait(self._conn, deadline, what)
                chunk = self._conn.recv(4096)
                if not chunk:
                    raise L1Died(
                        f"L1 closed its control port while waiting for {what}\n"
                        f"{self.console()}"
                    )
                self._buf += chunk
            line, _, self._buf = self._buf.partition(b"\n")
            text = line.decode(errors="replace").strip()
            verb, _, state = text.partition(" ")
            if verb != "HB":
                return text
            self._liveness.beat(state)

    @property
    def closed(self) -> bool:
        return self._conn is None

    def console(self) -> str:
        """The tail of L1's serial console, for error messages."""
        text = ""
        for name in ("qemu.err", "console.log"):
            path = self._tmp / name
            if path.exists():
                text += path.read_text(errors="replace")
        return "--- L1 console (tail) ---\n" + _tail(text)

    def run(
        self,
        cmd: list[str],
        timeout: float,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
    ) -> Result:
        """Run `cmd` in L1 with `cwd` (default: the caller's) and return its status and output."""
        if self.closed:
            raise L1Error("the L1 session is closed")
        self._jobs += 1
        job = f"j{self._jobs}"
        if self._own_root:
            full_env = dict(_OWN_ROOT_ENV)
        else:
            full_env = {k: os.environ[k] for k in _KEPT_ENV if k in os.environ}
        full_env |= {
            "HOME": "/run/home",  # tmpfs: unix sockets cannot be bound on 9p
            "PYTHONDONTWRITEBYTECODE": "1",  # the host's / is read-only
            "LKVM_CACHE": str(cache.root().parent),
            "LKVM_TESTHOST": "direct",  # L1's KVM runs guest kernels natively
        }
        full_env |= env or {}
        script = (
            f"mkdir -p /run/home\ncd {shlex.quote(cwd or os.getcwd())} || exit 125\n"
            f"exec /usr/bin/env -i {shlex.join(f'{k}={v}' for k, v in full_env.items())}"
            f" {shlex.join(cmd)}\n"
        )
        (self._share / f"{job}.sh").write_text(script)
        verb = "CONSOLE" if self._interactive else "RUN"
        self._conn.sendall(f"{verb} {job}\n".encode())
        deadline = time.monotonic() + timeout
        try:
            what = f"{shlex.join(cmd)} (timeout {timeout} s)"
            while not (line := self._readline(deadline, what)).startswith(
                f"DONE {job} "
            ):
                pass
        except L1Error as e:
            out = self._output(job)
            self.close(polite=False)
            raise type(e)(
                f"{e}\n--- stdout ---\n{_tail(out.stdout)}\n--- stderr ---\n{_tail(out.stderr)}"
            ) from None
        return self._output(job, int(line.split()[2]))

    def _output(self, job: str, returncode: int = -1) -> Result:
        def read(suffix: str) -> str:
            path = self._share / f"{job}.{suffix}"
            return path.read_text(errors="replace") if path.exists() else ""

        return Result(returncode, read("out"), read("err"))

    def close(self, polite: bool = True) -> None:
        """Stop L1 (asking it to power off first if `polite`) and remove every temporary file."""
        if self._proc is not None:
            if polite and self._conn is not None:
                with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                    self._conn.sendall(b"QUIT\n")
                    self._proc.wait(timeout=30)
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            self._proc = None
        for sock in (self._conn, self._listener):
            if sock is not None:
                sock.close()
        self._conn = None
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run(
    cmd: list[str], timeout: float, env: dict[str, str] | None = None, arch: str = DEFAULT
) -> Result:
    """Run one command in a fresh L1 (boot time is bounded separately from `timeout`)."""
    with Session(HostConfig(arch=arch)) as s:
        return s.run(cmd, timeout, env)
