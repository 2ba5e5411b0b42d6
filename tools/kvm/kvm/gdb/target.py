"""What the stub needs from an architecture: its registers in gdb's
order and target description, virtual-to-physical translation, and its
debug hardware.  x86/gdb.py and arm/gdb.py implement it;
Arch.gdb_target() hands it out."""

from dataclasses import dataclass
from enum import Enum
from typing import Protocol


class Watch(Enum):
    """The Z packet types 1-4, as the remote protocol numbers them."""
    EXECUTE = 1
    WRITE = 2
    READ = 3
    ACCESS = 4


@dataclass(frozen=True)
class Reg:
    """A register as the target description declares it to gdb; an arch
    adds where KVM keeps it."""
    name: str
    bits: int
    type: str       # gdb's type name, or one of the feature's own types
    feature: str    # the feature that holds it, e.g. org.gnu.gdb.i386.core


def description(architecture: str, registers: list[Reg], types: dict[str, str]) -> bytes:
    """target.xml: each feature in the order its first register comes, with
    the types it defines beyond gdb's predefined ones and its registers."""
    features = dict.fromkeys(r.feature for r in registers)
    body = "".join(
        f'<feature name="{f}">{types.get(f, "")}' + "".join(
            f'<reg name="{r.name}" bitsize="{r.bits}" type="{r.type}"/>'
            for r in registers if r.feature == f) + "</feature>" for f in features)
    return ('<?xml version="1.0"?><!DOCTYPE target SYSTEM "gdb-target.dtd">'
            f"<target><architecture>{architecture}</architecture>{body}</target>").encode()


@dataclass(frozen=True)
class HwPoint:
    kind: Watch
    addr: int
    length: int


@dataclass(frozen=True)
class Stop:
    """Why a vCPU stopped, as a stop reply names it: 'swbreak',
    'hwbreak', 'watch', 'rwatch', 'awatch', or '' for a finished step;
    addr is the data address of a watch, the trap's of a swbreak."""
    reason: str = ""
    addr: int | None = None
    signal: int = 5  # SIGTRAP; SIGINT (2) for a Ctrl-C


class GdbTarget(Protocol):
    # The description gdb asks for with qXfer:features:read, by annex.
    features: dict[str, bytes]
    # Each register's size in bytes, in gdb's numbering.
    sizes: list[int]
    BREAKPOINT: bytes  # the trap instruction a software breakpoint plants
    PC: int  # the program counter's register number
    HW_SLOTS: int

    def read_registers(self, vcpu: object) -> list[bytes]: ...

    def write_register(self, vcpu: object, number: int, value: bytes) -> None: ...

    def translate(self, vcpu: object, addr: int) -> int | None:
        """The guest physical address of virtual `addr`, or None."""

    def set_debug(self, vcpu: object, step: bool, sw: bool, hw: list[HwPoint]) -> None:
        """Program KVM_SET_GUEST_DEBUG; raises ValueError for a point the
        hardware cannot watch."""

    def stop_reason(self, vcpu: object, hw: list[HwPoint]) -> Stop:
        """Decode the debug exit the vCPU just had."""

    def pass_trap(self, vcpu: object) -> None:
        """Give the guest the software trap it just hit, one it planted
        itself (Linux patches its text with int3)."""

    def failed_trap(self, vcpu: object) -> int | None:
        """Where a trap instruction the host could not emulate stopped the
        vCPU (an internal-error exit), else None."""
