"""What tests share: paths, the tiny guests, and lkvm run as a user runs it."""

import os
import subprocess

import pytest

KVMDIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOP = os.path.dirname(os.path.dirname(KVMDIR))
GUESTS = os.path.join(KVMDIR, "tests", "guests")
LKVM = os.path.join(TOP, "lkvm")

# A tiny guest runs in well under a second even with emulated CPL0; a
# stuck one is a failure, not a hang.
TINY_TIMEOUT = 30


def guest(name: str) -> str:
    path = os.path.join(GUESTS, f"{name}.bin")
    assert os.path.exists(path), f"{path} is not built: run make"
    return path


def run_lkvm(*args: str, timeout: float = TINY_TIMEOUT, input: bytes | None = None,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`./lkvm ARGS`, as a user would type it, with output captured; env
    adds to the environment."""
    return subprocess.run([LKVM, *args], input=input, capture_output=True, timeout=timeout,
                          stdin=None if input is not None else subprocess.DEVNULL,
                          env={**os.environ, **env} if env else None)


# Cases each fuzz target ran, printed in the session's summary (conftest.py).
FUZZ_COUNTS = pytest.StashKey[dict[str, int]]()


def record_fuzz_cases(config: pytest.Config, target: str, cases: int) -> None:
    config.stash.setdefault(FUZZ_COUNTS, {})[target] = cases
