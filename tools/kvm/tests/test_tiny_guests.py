"""Tiny guests on the local /dev/kvm, run as a user runs them: serial
output, port I/O both ways, the i8042 reset, SMP started by INIT/SIPI,
and a fatal exit."""

import pytest

from include.uapi import lib
from kvm.config import Config
from kvm.kvm import Kvm
from kvm.vm import Vm
from tests.helpers import guest, run_lkvm
from x86 import cpu
from x86.arch import X86
from x86.flat import FlatBinary

pytestmark = pytest.mark.usefixtures("kvm_available")


def test_hello_prints_and_ends_cleanly():
    r = run_lkvm("run", "-c", "1", "-m", "16", guest("hello"))
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"Hello, lkvm!\n"
    assert b"KVM session ended normally" in r.stderr


def test_echo_reads_the_terminal():
    r = run_lkvm("run", "-c", "1", "-m", "16", guest("echo"), input=b"hello, port\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"HELLO, PORT\n"


def test_guest_sees_a_kvm_hypervisor():
    # Linux uses kvmclock only when both are there.
    r = run_lkvm("run", "-c", "1", "-m", "16", guest("cpuid"))
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"HKVMKVMKVM\0\0\0\n"


def test_flat_binary_enters_the_boot_cpu_only():
    """The APs keep the state KVM gives them, waiting for INIT/SIPI."""
    kvm = Kvm()
    arch = X86()
    vm = Vm(kvm, arch, Config(name="t", cpus=2, ram_mib=16))
    try:
        boot = FlatBinary(vm, open(guest("hello"), "rb").read(), None, "")
        for vcpu in vm.vcpus:
            arch.setup_vcpu(vcpu, boot)
        bsp, ap = (vcpu.get(lib.KVM_GET_MP_STATE, "struct kvm_mp_state").mp_state
                   for vcpu in vm.vcpus)
        assert bsp == lib.KVM_MP_STATE_RUNNABLE and ap in cpu.NOT_STARTED
    finally:
        vm.close()
        kvm.close()


@pytest.mark.parametrize("run", range(4))
def test_hello_on_two_vcpus_prints_once(run):
    """The README's first command, on a 2-CPU host's default of 2 vCPUs."""
    r = run_lkvm("run", "-c", "2", "-m", "16", guest("hello"))
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"Hello, lkvm!\n"


@pytest.mark.parametrize("cpus", [1, 2, 4])
def test_smp_every_vcpu_reports_in(cpus):
    # The boot CPU prints first, then starts the others with INIT/SIPI.
    r = run_lkvm("run", "-c", str(cpus), "-m", "16", guest("smp"))
    assert r.returncode == 0, r.stderr
    reported = r.stdout.decode().splitlines()
    assert reported[0] == "cpu 0"
    assert sorted(reported) == [f"cpu {i:x}" for i in range(cpus)]


def test_fatal_exit_dumps_registers():
    r = run_lkvm("run", "-c", "1", "-m", "16", guest("triple"))
    assert r.returncode == 1
    err = r.stderr.decode()
    # A triple fault is KVM_EXIT_SHUTDOWN on hardware; an emulating host
    # may report an internal error instead.  Either way: a dump, status 1.
    assert "KVM exit reason" in err and "on vCPU 0" in err
    assert "rbx: 000000005a5a5a5a" in err
    assert "Segment registers:" in err and "Code:" in err
    assert "Traceback" not in err


def test_unhandled_ports_are_ignored_or_stop_the_vcpu_on_request(tmp_path):
    # pio_bench writes port 0x80, which no device claims; its exit count
    # sits at offset 2 of the image.  --debug-ioport stops the vCPU at the
    # first such write, as kvmtool's kvm__emulate_io() does: its line, the
    # exit reason and a register dump, and status 1.
    image = bytearray(open(guest("pio_bench"), "rb").read())
    image[2:6] = (3).to_bytes(4, "little")
    path = tmp_path / "three.bin"
    path.write_bytes(image)
    quiet = run_lkvm("run", "-c", "1", "-m", "16", str(path))
    loud = run_lkvm("run", "-c", "1", "-m", "16", "--debug-ioport", str(path))
    assert quiet.returncode == 0, quiet.stderr
    assert b"IO error" not in quiet.stderr
    assert loud.returncode == 1, loud.stderr
    err = loud.stderr.decode().splitlines()
    assert err.count("IO error: OUT port=80, size=1, count=1") == 1
    assert "  Error: KVM exit reason: 2 (KVM_EXIT_IO) on vCPU 0" in err
    assert " Registers:" in err and "Traceback" not in loud.stderr.decode()


def test_all_vcpus_halted_with_interrupts_off_ends_with_0(kvm_available) -> None:
    r = run_lkvm("run", "-c", "2", guest("halt"))
    assert r.returncode == 0, r.stderr
    assert b"KVM session ended normally" in r.stderr


def test_legacy_dummy_ports_are_claimed():
    """kvmtool's no-op ports: silent even with --debug-ioport (which would
    stop at any unclaimed one), port 0x92 reads the A20 gate on, the
    SeaBIOS debug port 0x402 writes to the console, and kvmtool's debug
    port 0xe0 tells its accesses under --debug-ioport only."""
    r = run_lkvm("run", "-c", "1", "-m", "16", "--debug-ioport", guest("dummy_ports"))
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"K02\n"
    err = r.stderr.decode().splitlines()
    assert "debug port write from VCPU0: port=0xe0, size=1, data: 0xe0" in err
    assert not [line for line in err if "IO error" in line or "debug port" in line][1:]
    quiet = run_lkvm("run", "-c", "1", "-m", "16", guest("dummy_ports"))
    assert quiet.returncode == 0 and quiet.stdout == b"K02\n"
    assert b"debug port" not in quiet.stderr


def test_debug_exits_counts_exits_per_port():
    """hello writes its 13 bytes to the UART, then resets through the
    i8042: exactly the exits the table must show, and it ends the same."""
    r = run_lkvm("run", "-c", "1", "-m", "16", "--debug-exits", guest("hello"))
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"Hello, lkvm!\n"
    err = r.stderr.decode()
    assert "Exits handled by lkvm: 14," in err
    rows = {tuple(line.split()[:4]) for line in err.splitlines()}
    assert ("IO", "out", "0x3f8", "13") in rows and ("IO", "out", "0x64", "1") in rows
    plain = run_lkvm("run", "-c", "1", "-m", "16", guest("hello"))
    assert "Exits handled" not in plain.stderr.decode()
