"""The arch contract: what each arch directory (x86/, arm/, powerpc/)
implements for the core, and the one place that picks the host's.

An arch is a class; its class-level part answers before any VM exists
(options, the kernel's kind, where to look for one), and an instance
holds the arch's state for one VM, as kvmtool's struct kvm_arch does.
The core calls these hooks and never asks which arch it runs on.
"""

import argparse
import importlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, ClassVar, Protocol

from kvm.errors import LkvmError

if TYPE_CHECKING:
    from hw.pci import ConfigAccess
    from kvm.config import Config
    from kvm.gdb.target import GdbTarget
    from kvm.vcpu import Vcpu
    from kvm.vm import Vm

# The host's machine (uname -m) to the arch directory that runs its guests.
ARCHES = {"x86_64": "x86", "aarch64": "arm", "ppc64le": "powerpc"}


class Boot(Protocol):
    """A kernel image loaded into guest memory: how each vCPU enters it."""

    def setup_vcpu(self, vcpu: "Vcpu") -> None: ...


class SerialConsole(Protocol):
    """The console UART: the terminal's input goes to it, and sysrq."""

    def receive(self, data: bytes) -> None: ...

    def sysrq(self, key: bytes) -> None: ...


class SerialPort(Protocol):
    """A UART besides the console, for --tty: its output is settable."""
    output: Callable[[bytes], None] | None

    def receive(self, data: bytes) -> None: ...


class Arch(ABC):
    # The uapi headers only this arch has (asm/...), beside the generic ones.
    UAPI_HEADERS: ClassVar[tuple[str, ...]]
    # The most vCPUs the arch's guests can be told about.
    MAX_CPUS: ClassVar[int]
    # Interrupt lines the core hands out to PCI INTx and virtio-mmio.
    LEGACY_IRQS: ClassVar[tuple[int, ...]]
    # The guest physical window for PCI BARs: [start, end).
    PCI_MMIO: ClassVar[tuple[int, int]]
    # How the guest reaches PCI configuration space (hw/pci.py: the ports
    # of mechanism #1, an ECAM window, or the arch's own).
    PCI_CONFIG: ClassVar["ConfigAccess"]
    # Where virtio-mmio devices go, one region after another.
    VIRTIO_MMIO_START: ClassVar[int]
    # The CFI flash's window (-F/--flash): its base and largest size; None
    # where the arch's guests have none (kvmtool builds it for arm only).
    FLASH: ClassVar[tuple[int, int] | None] = None
    # Whether the in-kernel controller takes MSI routes (KVM_SET_GSI_ROUTING):
    # without, MSI-X vectors get GSIs and irqfds that nothing routes.
    MSI_ROUTES: ClassVar[bool] = True
    # Whether a guest can stop every CPU for good without an exit (x86's
    # HLT with interrupts off, held by the in-kernel LAPIC): the core then
    # parks the vCPUs twice a second to ask guest_halted().  arm64 guests
    # power off through PSCI, an exit, and need no such kicks.
    HALT_CHECK: ClassVar[bool] = False
    # The consoles of the arch's own (--console), beside virtio's: a UART
    # ("serial"), or sPAPR's hypervisor console ("hv").
    CONSOLES: ClassVar[tuple[str, ...]] = ("serial",)
    # The virtio transports the arch's guests never find, each with why:
    # asking for one is refused in one line, never a guest without it.
    UNREACHABLE: ClassVar[Mapping[str, str]] = {}

    # Before a VM exists.
    @classmethod
    def check_transports(cls, asked: Iterable[tuple[str, str]]) -> None:
        """Refuse a transport in UNREACHABLE; `asked` pairs each transport
        with the option that asked for it, for the message."""
        for option, transport in asked:
            if transport in cls.UNREACHABLE:
                raise LkvmError(f"{option}{transport}: {cls.UNREACHABLE[transport]}; use pci")

    @classmethod
    @abstractmethod
    def add_options(cls, parser: argparse.ArgumentParser) -> None:
        """The arch's own `lkvm run` options."""

    @classmethod
    @abstractmethod
    def configure(cls, args: argparse.Namespace) -> object:
        """The arch's part of the run configuration, from its options."""

    @classmethod
    @abstractmethod
    def kernel_candidates(cls) -> list[str]:
        """Where to look for a kernel when none is named, in order."""

    @classmethod
    @abstractmethod
    def boots_linux(cls, image: bytes) -> bool:
        """Whether the image is a kernel that takes lkvm's command line."""

    def __init__(self, config: object) -> None:
        self.config = config  # what configure() returned

    # The VM, in the order the core calls them.
    @abstractmethod
    def memory_layout(self, ram_size: int) -> list[tuple[int, int]]:
        """Guest RAM as (guest physical address, size) ranges."""

    @abstractmethod
    def init_vm(self, vm: "Vm") -> None:
        """What the VM needs before its irqchip and vCPUs."""

    @abstractmethod
    def create_irqchip(self, vm: "Vm") -> None:
        """The in-kernel interrupt controllers and timers."""

    def irq_line_id(self, line: int) -> int:
        """KVM_IRQ_LINE's irq field for one of the arch's lines (arm64
        encodes the interrupt's type in it)."""
        return line

    @abstractmethod
    def vcpus_created(self, vm: "Vm") -> None:
        """Every vCPU exists and no device yet: what needs them all (arm64
        initialises its vCPUs, then its vGIC, which KVM wants before any
        irqfd)."""

    @abstractmethod
    def irqchip_routes(self) -> list[tuple[int, int, int]]:
        """The controllers' GSI routes, (gsi, irqchip, pin), which the
        core keeps beside its MSI routes in KVM_SET_GSI_ROUTING."""

    @abstractmethod
    def add_platform_devices(self, vm: "Vm", console_out: Callable[[bytes], None]
                             ) -> SerialConsole:
        """The arch's own devices (UARTs, RTC, reset and power-off);
        returns the serial console."""

    @abstractmethod
    def load_kernel(self, vm: "Vm", cfg: "Config", params: str) -> Boot:
        """Probe the image and load it, its initrd and its command line
        (lkvm's, then params)."""

    def load_firmware(self, vm: "Vm", cfg: "Config") -> Boot:
        """-f/--firmware: load cfg.image as the guest's firmware, in place
        of a kernel and lkvm's own boot firmware."""
        raise LkvmError("--firmware: not supported on this architecture yet")

    @abstractmethod
    def setup_firmware(self, vm: "Vm", boot: Boot) -> None:
        """Describe the platform to the loaded kernel, once every device
        exists (ACPI on x86, a device tree on arm64 and powerpc), with
        the virtio-mmio devices and PCI slots the VM lists."""

    @abstractmethod
    def setup_vcpu(self, vcpu: "Vcpu", boot: Boot) -> None:
        """A vCPU's reset state for entering the boot."""

    def serial_port(self, index: int) -> SerialPort | None:
        """UART `index` (ttyS<index>) for --tty, once add_platform_devices
        made it; None where the arch has no such port.  0 is the console,
        which the core connects itself."""
        return None

    def system_event(self, vm: "Vm", kind: int) -> None:
        """The guest powered off or reset the machine (KVM_EXIT_SYSTEM_EVENT
        of type `kind`: PSCI on arm64): either ends the VM."""
        vm.stop(0)

    def exit_handlers(self, vcpu: "Vcpu") -> Mapping[int, Callable[[], None]]:
        """Handlers for the exit reasons the core's table lacks (powerpc's
        KVM_EXIT_PAPR_HCALL); the core's own win."""
        return {}

    # Debugging and life.
    @abstractmethod
    def dump_vcpu(self, vcpu: "Vcpu") -> str:
        """Registers and whatever else says where a vCPU is stuck."""

    @abstractmethod
    def inject_nmi(self, vcpu: "Vcpu") -> None:
        """An NMI, or what the arch has like one, with the vCPU parked."""

    def describe_translation(self, vcpu: "Vcpu", addr: int) -> str:
        """How the vCPU's page tables map a virtual address (lkvm debug
        --translate), with the vCPU parked."""
        return "no page-table walk for this architecture yet"

    def gdb_target(self, vm: "Vm") -> "GdbTarget | None":
        """Registers, translation and debug hardware for the gdb stub;
        None where the arch has no stub yet."""
        return None

    def guest_halted(self, vm: "Vm") -> bool:
        """Whether the guest stopped every CPU for good (asked with the
        vCPUs parked, where HALT_CHECK): the VM then ends."""
        return False


def load() -> type[Arch]:
    """The arch class for this host."""
    machine = os.uname().machine
    try:
        module = importlib.import_module(f"{ARCHES[machine]}.arch")
    except (KeyError, ModuleNotFoundError):
        raise LkvmError(f"lkvm does not support {machine} hosts yet") from None
    return module.ARCH
