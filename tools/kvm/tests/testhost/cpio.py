"""A writer for the initramfs format: cpio "newc" (Documentation/driver-api/early-userspace)."""

import stat
from pathlib import Path


class Cpio:
    """An archive built in memory; every entry owned by root with mtime 0, so
    the same inputs give the same bytes."""

    def __init__(self) -> None:
        self._out = bytearray()
        self._ino = 0
        self._dirs: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"") -> None:
        self._ino += 1
        fields = (self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0)
        self._out += b"070701" + b"".join(b"%08X" % f for f in fields)
        self._out += name.encode() + b"\0"
        self._pad()
        self._out += data
        self._pad()

    def _pad(self) -> None:
        self._out += b"\0" * (-len(self._out) % 4)

    def _parent(self, name: str) -> None:
        parent = name.rpartition("/")[0]
        if parent:
            self.dir(parent)

    def dir(self, name: str) -> None:
        """Add directory `name` and its missing parents."""
        if name not in self._dirs:
            self._parent(name)
            self._dirs.add(name)
            self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._parent(name)
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._parent(name)
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def write(self, path: Path) -> None:
        """Close the archive and write it to `path`."""
        self._entry("TRAILER!!!", 0)
        path.write_bytes(bytes(self._out))
