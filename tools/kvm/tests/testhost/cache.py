"""The test host's cache: ${LKVM_CACHE:-~/.cache/lkvm}/testhost, outside the checkout.

Every artifact's name carries a digest or version of its inputs, so a changed
input makes a new artifact instead of reusing a stale one, and an artifact
appears only complete (built under a temporary name, then renamed).
"""

import fcntl
import hashlib
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


class TestHostError(RuntimeError):
    """The test host could not be prepared or run."""


def root() -> Path:
    base = os.environ.get("LKVM_CACHE") or Path.home() / ".cache" / "lkvm"
    return Path(base) / "testhost"


def digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(b"%d:" % len(data) + data)
    return h.hexdigest()[:16]


@contextmanager
def locked() -> Iterator[Path]:
    """Hold the cache's lock, so concurrent test runs don't build the same thing twice."""
    path = root()
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield path


def build(path: Path, make: Callable[[Path], None]) -> Path:
    """`path`, made by `make(tmp)` and renamed into place if it doesn't exist yet."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        make(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp)
        else:
            tmp.unlink(missing_ok=True)
    return path
