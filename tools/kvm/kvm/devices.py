"""The device registry: what a VM is made of, brought up level by level
and torn down in reverse, as kvmtool's init levels (util-init.h:
core_init ... late_init, and their exits) do.

A device is anything with a life to manage: /dev/kvm and the VM at the
core, the virtio devices and their I/O threads, the IPC socket and the
terminal last.  Teardown runs every exit even when one fails, so a stop
always gets as far as the process's own exit."""

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Protocol

from kvm import msg

# How long a stop waits for a thread stuck in the kernel (a backend's
# read, a vCPU behind it) before abandoning it: daemon threads do not
# hold up the process's exit, and nothing can interrupt a syscall from
# Python.
STUCK_SECONDS = 1.0


class Level(IntEnum):
    """Init order; exits run in the reverse one."""
    CORE = 0        # /dev/kvm, the VM: its memory and vCPUs
    BASE = 1        # irq routing, buses
    DEV_BASE = 2    # the PCI bus
    DEV = 3         # platform devices: UARTs, i8042, RTC
    VIRTIO = 4      # virtio devices and their I/O threads
    FIRMWARE = 5    # the loaded kernel, firmware tables
    LATE = 6        # what users reach: the terminal, the IPC socket


class Device(Protocol):
    name: str

    def init(self) -> None:
        """Start serving; every device of a lower level is up."""

    def exit(self) -> None:
        """Stop and release; every device of a higher level is gone.  It
        must return in bounded time, abandoning what is stuck."""


def _nothing() -> None:
    pass


@dataclass
class Hooks:
    """A Device made of two callables, for what has no class of its own."""
    name: str
    exit: Callable[[], None]
    init: Callable[[], None] = _nothing


@dataclass
class Registry:
    devices: list[tuple[Level, Device]] = field(default_factory=list)

    def add(self, level: Level, device: Device) -> None:
        self.devices.append((level, device))

    def _ordered(self) -> list[Device]:
        # sorted() is stable: a level's devices keep the order they came in.
        return [d for _, d in sorted(self.devices, key=lambda e: e[0])]

    def init(self) -> None:
        for device in self._ordered():
            device.init()

    def exit(self) -> None:
        """Every device's exit, last in first out, each whatever the others did."""
        for device in reversed(self._ordered()):
            try:
                device.exit()
            except Exception as e:  # one failing exit must not leak the rest
                msg.warning(f"{device.name}: exit failed: {e}")
        self.devices.clear()
