"""A virtual machine: memory slots, buses, interrupts, vCPUs and their life.

The arch module (x86/, arm/, powerpc/) is handed in; the core calls its
hooks and never asks which one it is.
"""

import os
import signal
import sys
import threading
from collections.abc import Callable

from include.uapi import ffi, lib
from kvm.bus import Bus
from kvm.errors import LkvmError
from kvm.ioctl import ioctl
from kvm.kvm import Kvm
from kvm.memory import GuestMemory
from kvm.vcpu import KICK_SIGNAL, Vcpu, VcpuStop

HALT_CHECK_SECONDS = 0.5


class Vm:
    def __init__(self, kvm: Kvm, arch: object, cpus: int, ram_size: int,
                 debug_ioport: bool = False, debug_mmio: bool = False,
                 hugetlbfs: str | None = None) -> None:
        self.kvm = kvm
        self.arch = arch
        self.fd = kvm.create_vm()
        self.pio = Bus("ioport", debug_ioport)
        self.mmio = Bus("mmio", debug_mmio)
        self.ram_size = ram_size
        self.mem = GuestMemory(arch.memory_layout(ram_size), hugetlbfs)
        for slot, r in enumerate(self.mem.regions):
            region = ffi.new("struct kvm_userspace_memory_region *", {
                "slot": slot, "guest_phys_addr": r.gpa, "memory_size": r.size,
                "userspace_addr": r.host})
            try:
                ioctl(self.fd, lib.KVM_SET_USER_MEMORY_REGION, region)
            except OSError as e:
                raise LkvmError(f"cannot give {r.size >> 20} MiB to the guest: "
                                f"{e.strerror}") from None
        arch.init_vm(self)
        self.vcpus = [Vcpu(self, i) for i in range(cpus)]
        self.exit_status = 0
        self.stopping = False
        # What a user sees (`lkvm list`, vmstate): only pause() and resume()
        # change it.  The halt check parks the vCPUs too, with _parking
        # alone: a user must not see, or resume, a pause they did not ask for.
        self.paused = False
        self._parking = False  # the vCPUs are to park: the user's pause or the check's
        self._stopped = threading.Event()
        self._pause_lock = threading.Condition()
        self._control = threading.Lock()  # one pauser at a time: the user or the halt check
        self._parked = 0
        self.on_exit: list[Callable[[], None]] = []
        # Kernel command line fragments devices need (virtio_mmio.device=...).
        self.cmdline: list[str] = []

    # Interrupts.
    def irq_line(self, irq: int, level: int) -> None:
        ioctl(self.fd, lib.KVM_IRQ_LINE,
              ffi.new("struct kvm_irq_level *", {"irq": irq, "level": level}))

    def irq_trigger(self, irq: int) -> None:
        """An edge on a line: what an ISA device's pulse looks like."""
        self.irq_line(irq, 1)
        self.irq_line(irq, 0)

    def irqfd(self, gsi: int) -> int:
        """An eventfd whose writes raise `gsi` in the kernel, no exit to us."""
        efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        ioctl(self.fd, lib.KVM_IRQFD, ffi.new("struct kvm_irqfd *", {"fd": efd, "gsi": gsi}))
        return efd

    def ioeventfd(self, addr: int, length: int, pio: bool, datamatch: int | None = None,
                  efd: int | None = None) -> int:
        """An eventfd the kernel signals on a guest write to `addr`, instead
        of exiting to a vCPU thread: `efd` if given (a doorbell that moved
        keeps its eventfd), else a new one."""
        if efd is None:
            efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._ioeventfd(efd, addr, length, pio, datamatch, 0)
        return efd

    def remove_ioeventfd(self, efd: int, addr: int, length: int, pio: bool,
                         datamatch: int | None = None) -> None:
        """Undo ioeventfd() (the eventfd stays open: the caller owns it)."""
        self._ioeventfd(efd, addr, length, pio, datamatch, lib.KVM_IOEVENTFD_FLAG_DEASSIGN)

    def _ioeventfd(self, efd: int, addr: int, length: int, pio: bool,
                   datamatch: int | None, flags: int) -> None:
        flags |= (lib.KVM_IOEVENTFD_FLAG_PIO if pio else 0) | \
            (lib.KVM_IOEVENTFD_FLAG_DATAMATCH if datamatch is not None else 0)
        ioctl(self.fd, lib.KVM_IOEVENTFD, ffi.new("struct kvm_ioeventfd *", {
            "addr": addr, "len": length, "fd": efd, "flags": flags,
            "datamatch": datamatch or 0}))

    # Life.
    def run(self) -> int:
        """Run every vCPU until the guest or a user stops the VM; return the
        exit status."""
        previous = signal.signal(KICK_SIGNAL, lambda *_: None)
        try:
            for vcpu in self.vcpus:
                vcpu.start()
            # A guest that halted every CPU for good (a Linux poweroff with
            # no ACPI) never exits to us: the in-kernel LAPIC keeps HLT.
            while not self._stopped.wait(HALT_CHECK_SECONDS):
                if self._halted_for_good():
                    self.stop(0)
            for vcpu in self.vcpus:
                vcpu.kick()
            for vcpu in self.vcpus:
                vcpu.thread.join()
        finally:
            signal.signal(KICK_SIGNAL, previous)
            for hook in self.on_exit:
                hook()
        return self.exit_status

    def _halted_for_good(self) -> bool:
        """Ask the arch with every vCPU parked: KVM holds a vCPU's state
        while it sits in KVM_RUN, halted or not."""
        with self._control:  # a user's pause or resume waits for the check
            if self.paused:
                return False  # the user paused it; leave it so
            self._park()
            try:
                return self.arch.guest_halted(self)
            finally:
                self._unpark()

    def stop(self, status: int, message: str | None = None) -> None:
        """End the VM; the first stop's status wins."""
        with self._pause_lock:
            if self.stopping:
                return
            self.stopping = True
            self.exit_status = status
            self._pause_lock.notify_all()
        if message:
            print(f"  # {message}", file=sys.stderr)
        self._stopped.set()
        for vcpu in self.vcpus:
            vcpu.kick()

    def pause(self) -> None:
        """Return once every vCPU is parked outside KVM_RUN."""
        with self._control:
            self._park()
            self.paused = self._parking  # not when the VM is stopping

    def resume(self) -> None:
        with self._control:
            self.paused = False
            self._unpark()

    def _park(self) -> None:
        with self._pause_lock:
            if self._parking or self.stopping:
                return
            self._parking = True
            for vcpu in self.vcpus:
                vcpu.kick()
            self._pause_lock.wait_for(
                lambda: self._parked == len(self.vcpus) or self.stopping)

    def _unpark(self) -> None:
        with self._pause_lock:
            self._parking = False
            self._pause_lock.notify_all()

    def vcpu_checkpoint(self, vcpu: Vcpu) -> None:
        """Where a kicked vCPU thread learns why: stop, pause, or go on."""
        with self._pause_lock:
            if self._parking and not self.stopping:
                self._parked += 1
                self._pause_lock.notify_all()
                self._pause_lock.wait_for(lambda: not self._parking or self.stopping)
                self._parked -= 1
            if self.stopping:
                raise VcpuStop

    def close(self) -> None:
        for vcpu in self.vcpus:
            vcpu.close()
        os.close(self.fd)
        self.mem.close()
