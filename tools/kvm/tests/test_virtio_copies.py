"""Copies out of guest memory are bounded by what a request may carry.

A hostile request chains many descriptors (for 9p as many as its queue
holds), each covering all of the guest's low RAM; a device must copy no
more than its protocol allows (msize for 9p, a chunk at a time for the
console), however much memory the chain names.  Python's own allocations
are traced, so what is measured is what lkvm copies, not what the guest
has.
"""

import importlib
import tracemalloc
from collections.abc import Callable

from virtio.console import TX, Console
from virtio.mock import F_NEXT, LOW_RAM, Driver, mock_memory
from virtio.p9.server import MAX_MSIZE

P9 = importlib.import_module("virtio.9p").P9
SLACK = 256 << 10       # the interpreter's own allocations while a device runs
CONSOLE_CHUNK = 4096    # a page of output at a time


def ram_chain(driver: Driver, index: int, descriptors: int) -> None:
    """Queue `index` gets one request of `descriptors` device-readable
    buffers, each all of low RAM."""
    q = driver.queues[index]
    for i in range(descriptors):
        last = i == descriptors - 1
        q.write_desc(i, 0, LOW_RAM, 0 if last else F_NEXT, i + 1)
    q.publish(0)


def peak_copy(run: Callable[[], None]) -> int:
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_p9_copies_at_most_msize(tmp_path):
    dev = P9(mock_memory(), str(tmp_path))
    d = Driver(dev)
    (q,) = d.start()
    ram_chain(d, 0, dev.queues[0].size)
    assert peak_copy(q.kick) < MAX_MSIZE + SLACK
    assert q.used_idx() == 1    # answered (an error), not dropped
    dev.close()


def test_console_copies_a_chunk_at_a_time():
    seen = [0, 0]               # bytes, largest write

    def output(data: bytes) -> None:
        seen[0] += len(data)
        seen[1] = max(seen[1], len(data))

    dev = Console(mock_memory(), output)
    d = Driver(dev)
    d.start()
    descriptors = 16
    ram_chain(d, TX, descriptors)
    assert peak_copy(d.queues[TX].kick) < CONSOLE_CHUNK + SLACK
    assert seen == [descriptors * LOW_RAM, CONSOLE_CHUNK]   # all of it, in chunks
    assert d.queues[TX].used_idx() == 1
    dev.close()
