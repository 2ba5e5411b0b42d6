"""Where e2e tests run their commands: on this host, or inside L1."""

import json
import os
import platform
import shlex
import subprocess
import sys

from . import probe
from .cache import TestHostError
from .hosts import HostConfig
from .session import L1Died, Result, Session

# Every job rerun because L1 died under it, as "<test or command>: <why>",
# for the test report (tests/conftest.py prints them); also appended, one
# JSON object a line, to $LKVM_TESTHOST_LOG when set (the e2e soak counts them).
RERUNS: list[str] = []


def _record_rerun(cmd: list[str], died: L1Died) -> None:
    why = str(died).splitlines()[0]
    # The test that ran it, where pytest says; else the command's first line.
    job = os.environ.get("PYTEST_CURRENT_TEST", "").removesuffix(" (call)")
    job = job or shlex.join(cmd).splitlines()[0][:100]
    line = f"{job}: {why}"
    RERUNS.append(line)
    print(f"testhost: L1 died ({why}); running the job again in a fresh L1",
          file=sys.stderr)
    if log := os.environ.get("LKVM_TESTHOST_LOG"):
        with open(log, "a") as f:
            f.write(json.dumps({"event": "l1-died", "job": job, "cmd": cmd,
                                "why": str(died)}) + "\n")


class Direct:
    """This host's KVM runs CPL0 natively: run commands right here."""

    in_l1 = False

    def run(
        self,
        cmd: list[str],
        timeout: float,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
    ) -> Result:
        try:
            done = subprocess.run(
                cmd,
                check=False,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=timeout,
                cwd=cwd,
                env=os.environ | (env or {}),
            )
        except subprocess.TimeoutExpired as e:
            raise TestHostError(f"{cmd} timed out after {timeout} s") from e
        return Result(done.returncode, done.stdout, done.stderr)

    def close(self) -> None:
        pass


class L1:
    """Run commands in one L1 boot, booting again only after a failure ended it.

    A job under which L1 itself died (L1Died: the host's fault, not the
    job's) runs once more in a fresh L1, and says so; a second death fails it.
    """

    in_l1 = True

    def __init__(self, config: HostConfig | None = None) -> None:
        self._config = config
        self._session: Session | None = None

    def run(
        self,
        cmd: list[str],
        timeout: float,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
    ) -> Result:
        try:
            return self._run(cmd, timeout, env, cwd)
        except L1Died as e:
            _record_rerun(cmd, e)
        return self._run(cmd, timeout, env, cwd)

    def _run(
        self, cmd: list[str], timeout: float, env: dict[str, str] | None, cwd: str | None
    ) -> Result:
        if self._session is None or self._session.closed:
            self._session = Session(self._config)
        return self._session.run(cmd, timeout, env, cwd)

    def close(self) -> None:
        if self._session is not None:
            self._session.close()


def arm64_host() -> "Direct | L1":
    """This machine where it is an arm64 one with KVM, else the arm64 L1."""
    if platform.machine() == "aarch64" and os.access("/dev/kvm", os.R_OK | os.W_OK):
        return Direct()
    return L1(HostConfig(arch="arm64"))


def ppc64_host() -> "Direct | L1":
    """This machine where it is a ppc64le one with KVM, else the ppc64 L1."""
    if platform.machine() == "ppc64le" and os.access("/dev/kvm", os.R_OK | os.W_OK):
        return Direct()
    return L1(HostConfig(arch="ppc64el"))


def run_bench(script: str, args: list[str], timeout: float, arch: str = "amd64") -> object:
    """Run a benchmark `script` with `args` where Linux guests of `arch` can
    run (in an L1 when this host's KVM can't) and return its last line of
    output, parsed as JSON.  Its stderr passes through; a failed run ends
    the caller with a message."""
    foreign = {"arm64": arm64_host, "ppc64el": ppc64_host}
    if arch in foreign:     # whose Python is Debian's python3 of that arch
        host, python = foreign[arch](), "python3"
    else:
        host, python = L1() if probe.needed() else Direct(), sys.executable
    try:
        r = host.run([python, os.path.abspath(script), *args], timeout=timeout)
    finally:
        host.close()
    sys.stderr.write(r.stderr)
    if r.returncode:
        sys.exit(f"{os.path.basename(script)}: the measurement failed")
    return json.loads(r.stdout.splitlines()[-1])
