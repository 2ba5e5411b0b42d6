"""--debug-iodelay: a disk whose reads each wait first, as kvmtool's
disk_image__read sleeps, to show how a guest copes with a slow disk."""

import time
from collections.abc import Callable

from disk.core import Disk


class IoDelay:
    """`disk`, with `ms` milliseconds before every read; all else as is."""

    def __init__(self, disk: Disk, ms: int, sleep: Callable[[float], None] = time.sleep) -> None:
        self.disk = disk
        self.delay = ms / 1000
        self.sleep = sleep

    def readv(self, views: list[memoryview], offset: int) -> None:
        self.sleep(self.delay)
        self.disk.readv(views, offset)

    def __getattr__(self, name: str) -> object:
        return getattr(self.disk, name)
