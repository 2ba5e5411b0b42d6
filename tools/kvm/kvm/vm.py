"""A virtual machine: memory slots, buses, interrupts, vCPUs and their life.

The arch (a kvm.arch.Arch of x86/, arm/ or powerpc/) is handed in; the
core calls its hooks and never asks which one it is.
"""

import os
import signal
import threading
import time
from typing import TYPE_CHECKING

from include.uapi import ffi, lib
from kvm import msg
from kvm.arch import Arch
from kvm.bus import Bus
from kvm.config import Config
from kvm.devices import STUCK_SECONDS
from kvm.errors import LkvmError
from kvm.haltwatch import HaltWatch
from kvm.ioctl import ioctl
from kvm.kvm import Kvm
from kvm.memory import GuestMemory
from kvm.vcpu import KICK_SIGNAL, Vcpu, VcpuStop

if TYPE_CHECKING:
    from hw.pci import PciBus
    from hw.vesa import Framebuffer
    from kvm.exitstats import ExitStats

HALT_CHECK_SECONDS = 0.5


class Vm:
    def __init__(self, kvm: Kvm, arch: Arch, cfg: Config) -> None:
        self.kvm = kvm
        self.arch = arch
        self.fd = kvm.create_vm()
        self.pio = Bus("ioport", strict=cfg.debug_ioport)
        self.mmio = Bus("mmio", cfg.debug_mmio)
        self.ram_size = cfg.ram_size
        self.mem = GuestMemory(arch.memory_layout(cfg.ram_size), cfg.hugetlbfs)
        for slot, r in enumerate(self.mem.regions):
            self.set_memory_slot(slot, r.gpa, r.size, r.host)
        self.next_slot = len(self.mem.regions)   # device memory (a framebuffer) after RAM
        arch.init_vm(self)
        arch.create_irqchip(self)
        self.vcpus = [Vcpu(self, i) for i in range(cfg.cpus)]
        arch.vcpus_created(self)
        self.exit_stats: ExitStats | None = None
        if cfg.debug_exits:
            from kvm import exitstats  # loaded for --debug-exits only
            self.exit_stats = exitstats.ExitStats()
            for vcpu in self.vcpus:
                vcpu.exits = self.exit_stats.wrap(vcpu, vcpu.exits)
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
        # The vCPUs a debugger (kvm/gdb) holds: parked like a pause, over
        # the user's pause and resume, until the debugger lets them go.
        self._held: set[int] = set()
        # The vCPUs the guest has not started or has stopped itself, where
        # lkvm does that (sPAPR's RTAS start-cpu and stop-self): parked
        # until the guest starts them.
        self._off: set[int] = set()
        # What the arch describes to the guest: the virtio-mmio devices as
        # (base, size, line), and the PCI bus (virtio's setup makes it).
        self.virtio_mmio: list[tuple[int, int, int]] = []
        self.pci: PciBus | None = None
        # A linear framebuffer's guest address and pixels (--vnc), for the
        # arch to tell a kernel about.
        self.framebuffer: tuple[int, Framebuffer] | None = None
        # The CFI flash's (base, size) (-F/--flash), for the arch to describe.
        self.flash: tuple[int, int] | None = None

    def set_memory_slot(self, slot: int, gpa: int, size: int, host: int,
                        flags: int = 0) -> None:
        """Back [gpa, gpa + size) with host memory at `host`: the guest's
        accesses there never exit (with KVM_MEM_READONLY, its writes still
        do, as MMIO).  Again with another gpa, it moves."""
        region = ffi.new("struct kvm_userspace_memory_region *", {
            "slot": slot, "flags": flags, "guest_phys_addr": gpa, "memory_size": size,
            "userspace_addr": host})
        try:
            ioctl(self.fd, lib.KVM_SET_USER_MEMORY_REGION, region)
        except OSError as e:
            raise LkvmError(f"cannot give {size >> 20} MiB to the guest at {gpa:#x}: "
                            f"{e.strerror}") from None

    # Interrupts.
    def irq_line(self, irq: int, level: int) -> None:
        ioctl(self.fd, lib.KVM_IRQ_LINE,
              ffi.new("struct kvm_irq_level *", {"irq": self.arch.irq_line_id(irq),
                                                 "level": level}))

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
        # Only an arch whose guests can halt for good unseen has it checked.
        check = HALT_CHECK_SECONDS if self.arch.HALT_CHECK else None
        watch = HaltWatch([vcpu.fd for vcpu in self.vcpus] if check else [])
        try:
            for vcpu in self.vcpus:
                vcpu.start()
            # A guest that halted every CPU for good (a Linux poweroff with
            # no ACPI) never exits to us: the in-kernel LAPIC keeps HLT.
            while not self._stopped.wait(check):
                if watch.worth_asking() and self._halted_for_good():
                    self.stop(0)
            for vcpu in self.vcpus:
                vcpu.kick()
            self._join_vcpus()
        finally:
            watch.close()
            signal.signal(KICK_SIGNAL, previous)
        return self.exit_status

    def _join_vcpus(self) -> None:
        """A vCPU thread ends at its next exit; one that does not within
        STUCK_SECONDS waits on a device stuck in its backend, and is left."""
        deadline = time.monotonic() + STUCK_SECONDS
        for vcpu in self.vcpus:
            vcpu.thread.join(max(deadline - time.monotonic(), 0))
            if vcpu.thread.is_alive():
                msg.warning(f"vCPU {vcpu.id} did not stop; abandoned")

    def _halted_for_good(self) -> bool:
        """Ask the arch with every vCPU parked: KVM holds a vCPU's state
        while it sits in KVM_RUN, halted or not."""
        with self._control:  # a user's pause or resume waits for the check
            if self.paused or self._held:
                return False  # the user or a debugger stopped it; leave it so
            if not self._park():
                return False  # a vCPU waits on a stuck device: not in HLT
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
            msg.error(message)
        self._stopped.set()
        for vcpu in self.vcpus:
            vcpu.kick()

    def pause(self) -> None:
        """Return once every vCPU is parked outside KVM_RUN."""
        with self._control:
            if not self._park():
                raise LkvmError(f"a vCPU did not pause within {STUCK_SECONDS:.0f} s: "
                                "it waits on a device stuck in its backend")
            self.paused = self._parking  # not when the VM is stopping

    def resume(self) -> None:
        with self._control:
            self.paused = False
            self._unpark()

    def _park(self) -> bool:
        """Park every vCPU; False, with none left parked, if one does not
        come within STUCK_SECONDS: a vCPU waiting on a device stuck in its
        backend must not hold the caller (the IPC thread, which serves
        lkvm stop) for ever."""
        with self._pause_lock:
            if self._parking or self.stopping:
                return True
            self._parking = True
            for vcpu in self.vcpus:
                vcpu.kick()
            if self._pause_lock.wait_for(
                    lambda: self._parked == len(self.vcpus) or self.stopping, STUCK_SECONDS):
                return True
            self._parking = False
            self._pause_lock.notify_all()
            return False

    def _unpark(self) -> None:
        with self._pause_lock:
            self._parking = False
            self._pause_lock.notify_all()

    @property
    def held(self) -> bool:
        """Whether a debugger holds any vCPU: the guest is stopped."""
        return bool(self._held)

    def hold(self, ids: set[int]) -> None:
        """Park the vCPUs `ids` for a debugger until release(); callable
        from a vCPU thread, so it does not wait (wait_held() does)."""
        with self._pause_lock:
            self._held |= ids
            for vcpu in self.vcpus:
                if vcpu.id in ids:
                    vcpu.kick()

    def wait_held(self) -> bool:
        """Wait until every vCPU is parked (those held and, when they
        are not all held, those a pause parks); False if one does not come
        within STUCK_SECONDS or the VM is stopping."""
        with self._pause_lock:
            return self._pause_lock.wait_for(
                lambda: self._parked == len(self.vcpus) or self.stopping,
                STUCK_SECONDS) and not self.stopping

    def release(self, ids: set[int]) -> None:
        with self._pause_lock:
            self._held -= ids
            self._pause_lock.notify_all()

    def vcpu_off(self, index: int) -> None:
        """Park vCPU `index` for the guest until vcpu_on(); callable from
        any vCPU thread, its own included."""
        with self._pause_lock:
            self._off.add(index)
            self.vcpus[index].kick()

    def vcpu_on(self, index: int) -> None:
        with self._pause_lock:
            self._off.discard(index)
            self._pause_lock.notify_all()

    def vcpu_is_off(self, index: int) -> bool:
        return index in self._off

    def vcpu_checkpoint(self, vcpu: Vcpu) -> None:
        """Where a kicked vCPU thread learns why: stop, pause, a
        debugger's hold, the guest's stopping it, or go on."""
        def stays() -> bool:
            return (self._parking or vcpu.id in self._held or vcpu.id in self._off) \
                and not self.stopping

        with self._pause_lock:
            if stays():
                self._parked += 1
                self._pause_lock.notify_all()
                self._pause_lock.wait_for(lambda: not stays())
                self._parked -= 1
            if self.stopping:
                raise VcpuStop

    def close(self) -> None:
        """The registry's core exit: vCPUs, the VM and its memory, all but
        what a thread left running may still be using."""
        running = [v for v in self.vcpus if v.thread is not None and v.thread.is_alive()]
        for vcpu in self.vcpus:
            if vcpu not in running:
                vcpu.close()
        if running:
            return  # it may be in KVM_RUN: the process's exit releases the VM
        os.close(self.fd)
        try:
            self.mem.close()
        except BufferError:
            pass  # an abandoned I/O thread holds a view of guest RAM
