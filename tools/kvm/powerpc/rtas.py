"""RTAS, the run-time services a pseries kernel calls through the /rtas
node: a five-instruction blob in guest memory that makes the guest's RTAS
call the hypercall KVMPPC_H_RTAS, and here a table of the services by
token.

The argument block is the guest's (struct rtas_args: token, nargs, nret,
then nargs arguments and nret results, big-endian 32-bit words); a block
outside RAM or with more words than RTAS allows is refused with
H_PARAMETER, and a call with a token lkvm never gave out or with the
wrong counts gets RTAS's parameter error in its first result.
"""

import calendar
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from kvm.errors import GuestError
from kvm.memory import GuestMemory
from powerpc.hcall import H_PARAMETER, H_SUCCESS

# mr r4,r3; lis r3,0; ori r3,r3,0xf000 (KVMPPC_H_RTAS); sc 1; blr: in
# big-endian words, since the kernel enters RTAS with MSR[LE] clear.
BLOB = struct.pack(">5I", 0x7C641B78, 0x3C600000, 0x6063F000, 0x44000022, 0x4E800020)

RTAS_MAX_WORDS = 16     # nargs + nret: the kernel's struct rtas_args has room for 16
HEADER = struct.Struct(">3I")

# Statuses, in the first result.
RTAS_SUCCESS = 0
RTAS_HARDWARE_ERROR = -1
RTAS_PARAMETER_ERROR = -3


class Services(Protocol):
    """What the RTAS services act on; CPUs by their server number (the
    vCPU's index)."""

    def display(self, data: bytes) -> None: ...

    def power_off(self) -> None: ...

    def reboot(self) -> None: ...

    def cpu_stopped(self, cpu: int) -> bool | None:
        """Whether the CPU is stopped; None if there is no such CPU."""

    def start_cpu(self, cpu: int, entry: int, r3: int) -> None:
        """Start a stopped CPU at `entry`, `r3` in its r3."""

    def stop_cpu(self, cpu: int) -> None: ...

    def pci_read(self, buid: int | None, addr: int, size: int) -> tuple[int, int]:
        """(status, value) of a PCI configuration read; the bridge by its
        BUID, or None for the one there is."""

    def pci_write(self, buid: int | None, addr: int, size: int, value: int) -> int:
        """The status of a PCI configuration write."""


@dataclass
class Clock:
    """The guest's time of day: the host's, moved by set-time-of-day."""
    offset: int = 0     # seconds

    def now(self) -> float:
        return time.time() + self.offset


@dataclass(frozen=True)
class Context:
    """One call's: what the services act on, and the CPU calling."""
    services: Services
    clock: Clock
    caller: int


Call = Callable[[Context, Sequence[int]], list[int]]


@dataclass(frozen=True)
class Service:
    name: str
    nargs: int
    nret: int
    call: Call


def display_character(r: Context, args: Sequence[int]) -> list[int]:
    r.services.display(bytes([args[0] & 0xFF]))
    return [RTAS_SUCCESS]


def power_off(r: Context, args: Sequence[int]) -> list[int]:
    r.services.power_off()
    return [RTAS_SUCCESS]


def system_reboot(r: Context, args: Sequence[int]) -> list[int]:
    r.services.reboot()
    return [RTAS_SUCCESS]


# query-cpu-stopped-state's answers.
CPU_STOPPED, CPU_RUNNING = 0, 2


def query_cpu_stopped_state(r: Context, args: Sequence[int]) -> list[int]:
    stopped = r.services.cpu_stopped(args[0])
    if stopped is None:
        return [RTAS_PARAMETER_ERROR]
    return [RTAS_SUCCESS, CPU_STOPPED if stopped else CPU_RUNNING]


def start_cpu(r: Context, args: Sequence[int]) -> list[int]:
    cpu, entry, r3 = args
    stopped = r.services.cpu_stopped(cpu)
    if stopped is None:
        return [RTAS_PARAMETER_ERROR]
    if not stopped:
        return [RTAS_HARDWARE_ERROR]    # PAPR: it runs already
    r.services.start_cpu(cpu, entry, r3)
    return [RTAS_SUCCESS]


def stop_self(r: Context, args: Sequence[int]) -> list[int]:
    r.services.stop_cpu(r.caller)
    return [RTAS_SUCCESS]


def get_time_of_day(r: Context, args: Sequence[int]) -> list[int]:
    now = r.clock.now()
    t = time.gmtime(now)
    ns = int(now % 1 * 1e9)
    return [RTAS_SUCCESS, t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec, ns]


def set_time_of_day(r: Context, args: Sequence[int]) -> list[int]:
    year, mon, day, hour, minute, sec, _ns = args
    if not (1970 <= year <= 9999 and 1 <= mon <= 12
            and 1 <= day <= calendar.monthrange(year, mon)[1]
            and hour < 24 and minute < 60 and sec < 60):
        return [RTAS_PARAMETER_ERROR]
    r.clock.offset = calendar.timegm((year, mon, day, hour, minute, sec)) - int(time.time())
    return [RTAS_SUCCESS]


def read_pci_config(r: Context, args: Sequence[int]) -> list[int]:
    addr, size = args
    return list(r.services.pci_read(None, addr, size))


def write_pci_config(r: Context, args: Sequence[int]) -> list[int]:
    addr, size, value = args
    return [r.services.pci_write(None, addr, size, value)]


def ibm_read_pci_config(r: Context, args: Sequence[int]) -> list[int]:
    addr, buid_hi, buid_lo, size = args
    return list(r.services.pci_read(buid_hi << 32 | buid_lo, addr, size))


def ibm_write_pci_config(r: Context, args: Sequence[int]) -> list[int]:
    addr, buid_hi, buid_lo, size, value = args
    return [r.services.pci_write(buid_hi << 32 | buid_lo, addr, size, value)]


# The services, whose tokens are their place here from TOKEN_BASE: the
# /rtas node names each with its token.
TOKEN_BASE = 0x2000
SERVICES = (
    Service("display-character", 1, 1, display_character),
    Service("power-off", 2, 1, power_off),
    Service("system-reboot", 0, 1, system_reboot),
    Service("get-time-of-day", 0, 8, get_time_of_day),
    Service("set-time-of-day", 7, 1, set_time_of_day),
    Service("query-cpu-stopped-state", 1, 2, query_cpu_stopped_state),
    Service("start-cpu", 3, 1, start_cpu),
    Service("stop-self", 0, 1, stop_self),
    Service("read-pci-config", 2, 2, read_pci_config),
    Service("write-pci-config", 3, 1, write_pci_config),
    Service("ibm,read-pci-config", 4, 2, ibm_read_pci_config),
    Service("ibm,write-pci-config", 5, 1, ibm_write_pci_config),
)
TOKENS = {s.name: TOKEN_BASE + i for i, s in enumerate(SERVICES)}


class Rtas:
    def __init__(self, mem: GuestMemory, services: Services) -> None:
        self.mem = mem
        self.services = services
        self.clock = Clock()

    def call(self, addr: int, caller: int = 0) -> int:
        """The H_RTAS hypercall's status for the block at `addr`, made by
        CPU `caller`."""
        try:
            token, nargs, nret = HEADER.unpack(self.mem.read(addr, HEADER.size))
            if nargs + nret > RTAS_MAX_WORDS or nret < 1:
                return H_PARAMETER
            words = struct.unpack(f">{nargs}I", self.mem.read(addr + HEADER.size, 4 * nargs))
            rets = self._run(Context(self.services, self.clock, caller), token, words, nret)
            self.mem.write(addr + HEADER.size + 4 * nargs,
                           struct.pack(f">{nret}I", *(v & 0xFFFFFFFF for v in rets)))
        except GuestError:
            return H_PARAMETER
        return H_SUCCESS

    @staticmethod
    def _run(ctx: Context, token: int, args: Sequence[int], nret: int) -> list[int]:
        """The results, padded to `nret` words."""
        index = token - TOKEN_BASE
        service = SERVICES[index] if 0 <= index < len(SERVICES) else None
        if service is None or len(args) != service.nargs or nret < service.nret:
            rets = [RTAS_PARAMETER_ERROR]
        else:
            rets = service.call(ctx, args)
        return rets + [0] * (nret - len(rets))
