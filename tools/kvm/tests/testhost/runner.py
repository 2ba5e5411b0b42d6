"""Where e2e tests run their commands: on this host, or inside L1."""

import json
import os
import subprocess
import sys

from . import probe
from .cache import TestHostError
from .hosts import DEFAULT
from .session import Result, Session


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
    """Run commands in one L1 boot, booting again only after a failure ended it."""

    in_l1 = True

    def __init__(self, arch: str = DEFAULT) -> None:
        self._arch = arch
        self._session: Session | None = None

    def run(
        self,
        cmd: list[str],
        timeout: float,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
    ) -> Result:
        if self._session is None or self._session.closed:
            self._session = Session(arch=self._arch)
        return self._session.run(cmd, timeout, env, cwd)

    def close(self) -> None:
        if self._session is not None:
            self._session.close()


def run_bench(script: str, args: list[str], timeout: float) -> object:
    """Run a benchmark `script` with `args` where Linux guests can run (in
    L1 when this host's KVM can't) and return its last line of output,
    parsed as JSON.  Its stderr passes through; a failed run ends the
    caller with a message."""
    host = L1() if probe.needed() else Direct()
    try:
        r = host.run([sys.executable, os.path.abspath(script), *args], timeout=timeout)
    finally:
        host.close()
    sys.stderr.write(r.stderr)
    if r.returncode:
        sys.exit(f"{os.path.basename(script)}: the measurement failed")
    return json.loads(r.stdout.splitlines()[-1])
