"""Where e2e tests run their commands: on this host, or inside L1."""

import os
import subprocess

from .cache import TestHostError
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

    def __init__(self) -> None:
        self._session: Session | None = None

    def run(
        self,
        cmd: list[str],
        timeout: float,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
    ) -> Result:
        if self._session is None or self._session.closed:
            self._session = Session()
        return self._session.run(cmd, timeout, env, cwd)

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
