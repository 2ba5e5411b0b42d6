"""lkvm stat: a guest's memory statistics, as its virtio balloon reports
them."""

import json

from include.uapi import ffi, lib
from kvm.errors import LkvmError, UsageError
from kvm.ipc import STAT
from kvm.ipc_client import Guest, for_each, instance_parser

# What each statistic means, in kvmtool's words; JSON uses the tag names.
LABELS = {
    lib.VIRTIO_BALLOON_S_SWAP_IN: ("swap_in", "The amount of memory that has been "
                                   "swapped in (in bytes):"),
    lib.VIRTIO_BALLOON_S_SWAP_OUT: ("swap_out", "The amount of memory that has been "
                                    "swapped out to disk (in bytes):"),
    lib.VIRTIO_BALLOON_S_MAJFLT: ("major_faults", "The number of major page faults "
                                  "that have occurred:"),
    lib.VIRTIO_BALLOON_S_MINFLT: ("minor_faults", "The number of minor page faults "
                                  "that have occurred:"),
    lib.VIRTIO_BALLOON_S_MEMFREE: ("free", "The amount of memory not being used for "
                                   "any purpose (in bytes):"),
    lib.VIRTIO_BALLOON_S_MEMTOT: ("total", "The total amount of memory available "
                                  "(in bytes):"),
}


def parse_stats(reply: bytes) -> list[tuple[int, int]]:
    """The reply is an array of struct virtio_balloon_stat."""
    size = ffi.sizeof("struct virtio_balloon_stat")
    if len(reply) % size:
        raise LkvmError(f"malformed memory statistics ({len(reply)} bytes)")
    stats = ffi.from_buffer("struct virtio_balloon_stat[]", reply)
    return [(s.tag, s.val) for s in stats]


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
                LABELS.get(tag, (f"tag_{tag}",))[0]: val for tag, val in stats}}))
            return
        print(f"\n\n\t*** Guest {guest.name} memory statistics ***\n")
        for tag, val in stats:
            print(LABELS.get(tag, ("", f"Statistic {tag}:"))[1], val)
        print()

    return for_each(args, memstat)
