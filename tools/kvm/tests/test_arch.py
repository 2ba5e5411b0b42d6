"""The arch contract: x86 implements all of it, the core reaches an arch
only through it, the arch's state lives in its own object, and an exit
the core has no handler for goes to the arch before it is fatal."""

import ast
import glob
import os
import threading

import pytest

from cli.cmd import load_builtin
from include import uapi_build
from include.uapi import ffi, lib
from kvm import arch as arch_loader
from kvm.arch import Arch
from kvm.config import Config
from kvm.errors import LkvmError
from kvm.ioctl import ioctl
from kvm.kvm import Kvm
from kvm.vm import HALT_CHECK_SECONDS, Vm
from tests.helpers import KVMDIR, guest
from x86.arch import X86

ARCH_DIRS = {"x86", "arm", "powerpc"}
# The core: everything but the arch directories, the tests and the benches.
GENERIC = ["lkvm.py", "builtin-*.py", "kvm/*.py", "virtio/**/*.py", "hw/*.py", "disk/*.py"]

run = load_builtin("run")


def generic_files() -> list[str]:
    return sorted(p for pattern in GENERIC
                  for p in glob.glob(os.path.join(KVMDIR, pattern), recursive=True))


def test_x86_implements_the_whole_contract():
    assert not X86.__abstractmethods__
    for name in Arch.__annotations__:
        assert hasattr(X86, name), f"X86 lacks {name}"
    assert arch_loader.load() is X86  # this suite runs on x86 hosts


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_the_binding_build_reads_the_arch_directory_list(machine):
    """One list per arch, in its directory: the build has no copy."""
    module = __import__(f"{arch_loader.ARCHES[machine]}.headers", fromlist=["UAPI_HEADERS"])
    assert uapi_build.arch_headers(machine) == module.UAPI_HEADERS
    assert not hasattr(uapi_build, "ARCH_HEADERS")


@pytest.mark.parametrize("path", generic_files(), ids=lambda p: os.path.relpath(p, KVMDIR))
def test_the_core_never_names_an_arch(path):
    with open(path) as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            assert "arch/x86" not in node.value, f"line {node.lineno} names x86's tree"
            continue
        else:
            continue
        for name in names:
            assert name.split(".")[0] not in ARCH_DIRS, f"line {node.lineno} imports {name}"


def test_kernel_lookup_asks_the_arch(tmp_path, monkeypatch):
    kernel = tmp_path / "Image"
    kernel.write_bytes(open(guest("hello"), "rb").read())

    class Elsewhere(X86):
        @classmethod
        def kernel_candidates(cls) -> list[str]:
            return [str(tmp_path / "missing"), str(kernel)]

    monkeypatch.setattr(arch_loader, "load", lambda: Elsewhere)
    assert run.configure(["-m", "16", "-c", "1"]).kernel == str(kernel)
    kernel.unlink()
    with pytest.raises(LkvmError, match=f"searched: {tmp_path}/missing, {kernel}$"):
        run.configure(["-m", "16", "-c", "1"])


HELLO = Config(name="t", cpus=1, ram_mib=16, image=open(guest("hello"), "rb").read())


@pytest.fixture
def kvm(kvm_available):
    kvm = Kvm()
    yield kvm
    kvm.close()


def test_the_arch_keeps_its_state(kvm):
    vm = Vm(kvm, X86(), HELLO)
    try:
        assert not hasattr(vm, "supported_cpuid")
        assert vm.arch.supported_cpuid.nent > 0
    finally:
        vm.close()


class Stepping(X86):
    """x86, and handlers for the single-step exits the core has none for,
    and for port I/O, which the core has its own for."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[int] = []

    def exit_handlers(self, vcpu):
        return {lib.KVM_EXIT_DEBUG: lambda: self.step(vcpu), lib.KVM_EXIT_IO: None}

    def step(self, vcpu) -> None:
        self.steps.append(vcpu.run.debug.arch.pc)
        if len(self.steps) == 3:
            vcpu.vm.stop(7)


def test_an_exit_the_core_lacks_goes_to_the_arch(kvm):
    arch = Stepping()
    vm = Vm(kvm, arch, HELLO)
    try:
        (vcpu,) = vm.vcpus
        assert vcpu.exits[lib.KVM_EXIT_IO] is not None  # the core's own win
        arch.setup_vcpu(vcpu, arch.load_kernel(vm, HELLO, ""))
        ioctl(vcpu.fd, lib.KVM_SET_GUEST_DEBUG, ffi.new("struct kvm_guest_debug *", {
            "control": lib.KVM_GUESTDBG_ENABLE | lib.KVM_GUESTDBG_SINGLESTEP}))
        assert vm.run() == 7
        # One exit per instruction, from the flat binary's load address on.
        assert len(arch.steps) == 3 and arch.steps[0] > 0x10000
    finally:
        vm.close()


class NoHaltCheck(X86):
    """An arch whose guests end only through exits (arm64's PSCI): the
    core must not kick its vCPUs to ask."""

    HALT_CHECK = False

    def __init__(self) -> None:
        super().__init__()
        self.asked = threading.Event()

    def guest_halted(self, vm) -> bool:
        self.asked.set()
        return False


def test_no_halt_check_no_kicks(kvm):
    """Twice a second the core parked every vCPU (an exit each) to ask
    the arch, even one whose guests never halt for good without an exit."""
    idle = Config(name="t", cpus=1, ram_mib=16, image=open(guest("idle"), "rb").read())
    arch = NoHaltCheck()
    vm = Vm(kvm, arch, idle)
    try:
        arch.setup_vcpu(vm.vcpus[0], arch.load_kernel(vm, idle, ""))
        # Three of the old checks' periods, or until the arch is asked.
        stopper = threading.Thread(
            target=lambda: (arch.asked.wait(3 * HALT_CHECK_SECONDS), vm.stop(0)))
        stopper.start()
        assert vm.run() == 0  # signals: the main thread's
        stopper.join()
        assert not arch.asked.is_set()
    finally:
        vm.close()
