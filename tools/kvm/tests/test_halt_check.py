"""The halt check (a guest that halted every vCPU with interrupts off
ends lkvm) must not stop the world to look: a running guest is never
parked, an idle one at most once while it idles."""

import threading

import pytest

from kvm import vm as vm_module
from kvm.config import Config
from kvm.kvm import Kvm
from kvm.vm import Vm
from tests.helpers import guest
from x86.arch import X86
from x86.flat import FlatBinary

pytestmark = pytest.mark.usefixtures("kvm_available")

LOOK_SECONDS = 0.01
STOPPED_BY_TEST = 99


class Looks(threading.Event):
    """The VM's stop event, which stops the VM (with STOPPED_BY_TEST)
    after a number of halt checks."""

    def __init__(self, vm: Vm, looks: int) -> None:
        super().__init__()
        self.vm, self.left = vm, looks

    def wait(self, timeout: float | None = None) -> bool:
        if super().wait(timeout):
            return True
        self.left -= 1
        if self.left == 0:
            self.vm.stop(STOPPED_BY_TEST)
        return self.is_set()


def run_counting_parks(name: str, cpus: int, looks: int,
                       monkeypatch: pytest.MonkeyPatch) -> tuple[int, int]:
    """Run guest `name` for `looks` halt checks or until it ends; its exit
    status and how many times the check parked its vCPUs."""
    monkeypatch.setattr(vm_module, "HALT_CHECK_SECONDS", LOOK_SECONDS)
    kvm = Kvm()
    arch = X86()
    vm = Vm(kvm, arch, Config(name="t", cpus=cpus, ram_mib=16))
    try:
        boot = FlatBinary(vm, open(guest(name), "rb").read(), None, "")
        for vcpu in vm.vcpus:
            arch.setup_vcpu(vcpu, boot)
        parks = 0
        park = vm._park

        def counting_park() -> bool:
            nonlocal parks
            parks += 1
            return park()
        monkeypatch.setattr(vm, "_park", counting_park)
        vm._stopped = Looks(vm, looks)
        status = vm.run()
        return status, parks
    finally:
        vm.close()
        kvm.close()


def test_a_running_guest_is_never_parked(monkeypatch):
    # counter keeps both vCPUs busy with port writes for ever.
    status, parks = run_counting_parks("counter", 2, 20, monkeypatch)
    assert (status, parks) == (STOPPED_BY_TEST, 0)


def test_an_idle_guest_is_parked_at_most_once(monkeypatch):
    # idle halts with interrupts on and nothing ever interrupts it.
    status, parks = run_counting_parks("idle", 1, 20, monkeypatch)
    assert status == STOPPED_BY_TEST and parks <= 1


def test_a_guest_halted_for_good_still_ends(monkeypatch):
    # Well before the test would stop it (the old check took 2 looks).
    status, parks = run_counting_parks("halt", 2, 500, monkeypatch)
    assert status == 0 and parks >= 1
