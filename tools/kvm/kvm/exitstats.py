"""Exit statistics for `lkvm run --debug-exits`: the exits that reached
lkvm, by kind and by port or MMIO address, with the wall time their
handlers took, printed when the guest ends.  What `perf kvm stat` shows
from the kernel's side, seen from the VMM's: where a slow boot spends its
exits.

Only a VM asked for them pays: its vCPUs run the same handlers, each
wrapped in a timer.  Each vCPU counts in a table of its own, so the exit
path takes no lock; the tables are merged when the guest has ended.
"""

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple, TextIO

from include.uapi import lib
from kvm.vcpu import IO, IO_AT, exit_names

if TYPE_CHECKING:
    from kvm.vcpu import Vcpu


class Key(NamedTuple):
    kind: str           # KVM_EXIT_IO -> "IO"
    access: str         # in, out, read, write; "" for exits without one
    address: int | None


Handler = Callable[[], None]
Table = dict[Key, list[int]]    # key -> [count, nanoseconds]


def _io_key(vcpu: "Vcpu") -> Key:
    direction, _, port, _, _ = IO.unpack_from(vcpu.run_map, IO_AT)
    return Key("IO", "out" if direction == lib.KVM_EXIT_IO_OUT else "in", port)


def _mmio_key(vcpu: "Vcpu") -> Key:
    m = vcpu.run.mmio
    return Key("MMIO", "write" if m.is_write else "read", m.phys_addr)


# Exits whose key names an address; the rest are counted by kind alone.
ADDRESSED = {lib.KVM_EXIT_IO: _io_key, lib.KVM_EXIT_MMIO: _mmio_key}


def kind(reason: int) -> str:
    return exit_names().get(reason, f"reason {reason}").removeprefix("KVM_EXIT_")


class ExitStats:
    def __init__(self) -> None:
        self._tables: list[Table] = []

    def wrap(self, vcpu: "Vcpu", exits: dict[int, Handler]) -> dict[int, Handler]:
        """`exits` with every handler counted and timed into a new table
        of `vcpu`'s own."""
        table: Table = {}
        self._tables.append(table)
        return {reason: self._timed(vcpu, table, reason, handler)
                for reason, handler in exits.items()}

    @staticmethod
    def _timed(vcpu: "Vcpu", table: Table, reason: int, handler: Handler) -> Handler:
        address_of = ADDRESSED.get(reason)
        fixed = Key(kind(reason), "", None)
        clock = time.perf_counter_ns

        def timed() -> None:
            key = address_of(vcpu) if address_of else fixed
            start = clock()
            try:
                handler()   # VcpuStop ends the loop, but the exit still counts
            finally:
                entry = table.setdefault(key, [0, 0])
                entry[0] += 1
                entry[1] += clock() - start
        return timed

    def merged(self) -> Table:
        total: Table = {}
        for table in self._tables:
            for key, (count, ns) in list(table.items()):
                entry = total.setdefault(key, [0, 0])
                entry[0] += count
                entry[1] += ns
        return total

    def report(self, out: TextIO) -> None:
        """The table, the most expensive first."""
        rows = sorted(self.merged().items(), key=lambda kv: (-kv[1][1], kv[0].kind))
        count = sum(c for c, _ in (v for _, v in rows))
        ns = sum(t for _, t in (v for _, v in rows))
        print(f"\n  Exits handled by lkvm: {count}, {ns / 1e6:.3f} ms in handlers\n"
              f"  {'exit':<16} {'access':<6} {'address':>18} {'count':>10} "
              f"{'total ms':>12} {'avg us':>10}", file=out)
        for key, (c, t) in rows:
            address = f"{key.address:#x}" if key.address is not None else ""
            print(f"  {key.kind:<16} {key.access:<6} {address:>18} {c:>10} "
                  f"{t / 1e6:>12.3f} {t / c / 1e3:>10.1f}", file=out)
