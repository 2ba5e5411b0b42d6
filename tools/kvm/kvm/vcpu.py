"""A virtual CPU: its thread, KVM_RUN, and the dispatch of exits.

The thread spends its life in KVM_RUN, which drops the GIL; each exit is
looked up in a table by reason, the arch's for reasons the core lacks.
Another thread stops or pauses a vCPU by setting `immediate_exit` and
sending it KICK_SIGNAL, so KVM_RUN returns EINTR whether the signal lands
inside the ioctl or just before it.
"""

import fcntl
import functools
import mmap
import signal
import sys
import threading

from include.uapi import ffi, lib
from kvm import msg
from kvm.bus import Unclaimed
from kvm.cstruct import reader
from kvm.ioctl import ioctl, ioctl_fd

KICK_SIGNAL = signal.SIGUSR1


@functools.cache
def exit_names() -> dict[int, str]:
    """KVM_EXIT_<NAME> by exit reason, for messages.  Made on first use:
    it walks every name of the bindings, 1.5 ms and half a MB of RSS that
    a guest ending normally never needs."""
    return {getattr(lib, n): n for n in dir(lib) if n.startswith("KVM_EXIT_")
            and not n.startswith(("KVM_EXIT_IO_", "KVM_EXIT_HYPERV_", "KVM_EXIT_XEN_"))}


# The exit path reads kvm_run with one unpack each, not a cffi read per field.
EXIT_REASON, EXIT_REASON_AT = reader("struct kvm_run", ("exit_reason",))
IO, IO_AT = reader("kvm_run__io", ("direction", "size", "port", "count", "data_offset"),
                   ffi.offsetof("struct kvm_run", "io"))


OUT = lib.KVM_EXIT_IO_OUT


class VcpuStop(Exception):
    """Raised inside a vCPU thread to end its loop."""


class Vcpu:
    def __init__(self, vm: "object", index: int) -> None:
        self.vm = vm
        self.id = index
        self.fd = ioctl_fd(vm.fd, lib.KVM_CREATE_VCPU, index)
        self.run_map = mmap.mmap(self.fd, vm.kvm.vcpu_mmap_size, flags=mmap.MAP_SHARED,
                                 prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self.run = ffi.from_buffer("struct kvm_run *", self.run_map)
        self.run_bytes = memoryview(self.run_map)
        self.thread: threading.Thread | None = None
        # The arch's handlers fill in reasons the core's table lacks.
        self.exits = {
            **vm.arch.exit_handlers(self),
            lib.KVM_EXIT_IO: self._exit_io,
            lib.KVM_EXIT_MMIO: self._exit_mmio,
            lib.KVM_EXIT_HLT: self._exit_hlt,
            lib.KVM_EXIT_SHUTDOWN: self._exit_fatal,
            lib.KVM_EXIT_FAIL_ENTRY: self._exit_fatal,
            lib.KVM_EXIT_INTERNAL_ERROR: self._exit_fatal,
            lib.KVM_EXIT_SYSTEM_EVENT: self._exit_system_event,
            lib.KVM_EXIT_INTR: self._exit_intr,
        }

    # Register access.
    def get(self, request: int, ctype: str) -> object:
        """A KVM_GET_* ioctl's answer, in a fresh `ctype`."""
        buf = ffi.new(ctype + " *")
        ioctl(self.fd, request, buf)
        return buf

    def set(self, request: int, value: object) -> None:
        ioctl(self.fd, request, value)

    # The thread.
    def start(self) -> None:
        self.thread = threading.Thread(target=self._thread, name=f"kvm-vcpu-{self.id}",
                                       daemon=True)
        self.thread.start()

    def kick(self) -> None:
        """Make KVM_RUN return soon, wherever the thread is."""
        self.run.immediate_exit = 1
        if self.thread is not None and self.thread.is_alive():
            try:
                signal.pthread_kill(self.thread.ident, KICK_SIGNAL)
            except ProcessLookupError:
                pass

    def _thread(self) -> None:
        try:
            self._loop()
        except VcpuStop:
            pass
        except Exception as e:  # a bug in a device model must not hang the VM
            msg.trace(e)
            self.vm.stop(1, f"vCPU {self.id}: {e}")

    def _loop(self) -> None:
        fd, run, exits, vm = self.fd, self.run, self.exits, self.vm
        request, page, reason_at = lib.KVM_RUN, self.run_map, EXIT_REASON_AT
        unpack_reason, fatal = EXIT_REASON.unpack_from, self._exit_fatal
        while True:
            if vm.stopping:
                raise VcpuStop
            try:
                fcntl.ioctl(fd, request, 0)
            except InterruptedError:
                run.immediate_exit = 0
                vm.vcpu_checkpoint(self)
                continue
            except BlockingIOError:
                # An AP that was waiting for INIT/SIPI got them: run it.
                continue
            exits.get(unpack_reason(page, reason_at)[0], fatal)()

    # Exits.
    def _exit_io(self) -> None:
        direction, size, port, count, off = IO.unpack_from(self.run_map, IO_AT)
        data = self.run_bytes
        pio = self.vm.pio
        try:
            if count == 1:  # all but string I/O (rep outs/ins): no loop
                if direction == OUT:
                    pio.write(port, size, int.from_bytes(data[off:off + size], "little"))
                else:
                    data[off:off + size] = pio.read(port, size).to_bytes(size, "little")
                return
            if direction == OUT:
                for i in range(off, off + size * count, size):
                    pio.write(port, size, int.from_bytes(data[i:i + size], "little"))
            else:
                for i in range(off, off + size * count, size):
                    data[i:i + size] = pio.read(port, size).to_bytes(size, "little")
        except Unclaimed:
            # --debug-ioport: kvmtool's ioport_error() line, then the vCPU
            # stops with a register dump as on any exit it cannot handle.
            print(f"IO error: {'OUT' if direction == OUT else 'IN'} port={port:x}, "
                  f"size={size}, count={count}", file=sys.stderr)
            self._exit_fatal()

    def _exit_mmio(self) -> None:
        m = self.run.mmio
        size = m.len
        if m.is_write:
            self.vm.mmio.write(m.phys_addr, size,
                               int.from_bytes(ffi.buffer(m.data, size), "little"))
        else:
            ffi.buffer(m.data, size)[:] = self.vm.mmio.read(m.phys_addr, size).to_bytes(
                size, "little")

    def _exit_hlt(self) -> None:
        # Only seen without an in-kernel LAPIC: a halted CPU ends the guest.
        self.vm.stop(0)
        raise VcpuStop

    def _exit_intr(self) -> None:
        self.vm.vcpu_checkpoint(self)

    def _exit_system_event(self) -> None:
        self.vm.arch.system_event(self.vm, self.run.system_event.type)
        raise VcpuStop

    def _exit_fatal(self) -> None:
        reason = self.run.exit_reason
        name = exit_names().get(reason, "unknown")
        detail = ""
        if reason == lib.KVM_EXIT_INTERNAL_ERROR:
            detail = f", suberror {self.run.internal.suberror}"
        elif reason == lib.KVM_EXIT_FAIL_ENTRY:
            detail = f", hardware reason {self.run.fail_entry.hardware_entry_failure_reason:#x}"
        msg.error(f"KVM exit reason: {reason} ({name}){detail} on vCPU {self.id}",
                  fresh_line=True)
        try:
            print(self.vm.arch.dump_vcpu(self), file=sys.stderr)
        except OSError as e:
            msg.warning(f"registers unavailable: {e.strerror}")
        self.vm.stop(1)
        raise VcpuStop

    def close(self) -> None:
        self.run = None
        self.run_bytes.release()
        self.run_map.close()
        import os
        os.close(self.fd)
