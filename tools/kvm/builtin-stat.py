"""lkvm stat: a guest's memory statistics, as its virtio balloon reports
them."""

import json

from include.uapi import ffi, lib
from ipc.client import Guest, for_each, instance_parser
from ipc.protocol import STAT
from kvm.errors import LkvmError, UsageError

# The statistics kvmtool's builtin-stat.c names, in its order (which is
# also the order Linux's driver sends them in): the tag, the JSON name,
# and kvmtool's words, which its value follows directly.
LABELS = (
    (lib.VIRTIO_BALLOON_S_SWAP_IN, "swap_in",
     "The amount of memory that has been swapped in (in bytes):"),
    (lib.VIRTIO_BALLOON_S_SWAP_OUT, "swap_out",
     "The amount of memory that has been swapped out to disk (in bytes):"),
    (lib.VIRTIO_BALLOON_S_MAJFLT, "major_faults",
     "The number of major page faults that have occurred:"),
    (lib.VIRTIO_BALLOON_S_MINFLT, "minor_faults",
     "The number of minor page faults that have occurred:"),
    (lib.VIRTIO_BALLOON_S_HTLB_PGALLOC, "hugetlb_allocations",
     "The number of successful HugeTLB allocations:"),
    (lib.VIRTIO_BALLOON_S_HTLB_PGFAIL, "hugetlb_failures",
     "The number of failed HugeTLB allocations:"),
    (lib.VIRTIO_BALLOON_S_MEMFREE, "free",
     "The amount of memory not being used for any purpose (in bytes):"),
    (lib.VIRTIO_BALLOON_S_MEMTOT, "total", "The total amount of memory (in bytes):"),
    (lib.VIRTIO_BALLOON_S_AVAIL, "available", "The estimated available memory (in bytes):"),
    (lib.VIRTIO_BALLOON_S_CACHES, "caches",
     "The amount of memory in use for file caching (in bytes):"),
)
ORDER = {tag: i for i, (tag, _, _) in enumerate(LABELS)}
NAMES = {tag: name for tag, name, _ in LABELS}
WORDS = {tag: words for tag, _, words in LABELS}


def parse_stats(reply: bytes) -> list[tuple[int, int]]:
    """The reply is an array of struct virtio_balloon_stat."""
    size = ffi.sizeof("struct virtio_balloon_stat")
    if len(reply) % size:
        raise LkvmError(f"malformed memory statistics ({len(reply)} bytes)")
    stats = ffi.from_buffer("struct virtio_balloon_stat[]", reply)
    return [(s.tag, s.val) for s in stats]


def in_kvmtools_order(stats: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Known statistics in kvmtool's order, then any others as they came."""
    return sorted(stats, key=lambda s: ORDER.get(s[0], len(ORDER)))


def memstat_lines(stats: list[tuple[int, int]]) -> list[str]:
    return [WORDS.get(tag, f"Unknown memory statistic (ID {tag}): ") + str(val)
            for tag, val in in_kvmtools_order(stats)]


def cmd_stat(argv: list[str]) -> int:
    p = instance_parser("stat")
    p.add_argument("-m", "--memory", action="store_true", help="memory statistics")
    p.add_argument("--json", action="store_true", help="print JSON")
    args = p.parse(argv)
    if not args.memory:
        raise UsageError("nothing to show: give --memory")

    def memstat(guest: Guest) -> None:
        stats = parse_stats(guest.request(STAT))
        if args.json:
            print(json.dumps({"name": guest.name, "memory": {
                NAMES.get(tag, f"tag_{tag}"): val for tag, val in in_kvmtools_order(stats)}}))
            return
        print(f"\n\n\t*** Guest {guest.name} memory statistics ***\n")
        print("\n".join(memstat_lines(stats)))
        print()

    return for_each(args, memstat)
