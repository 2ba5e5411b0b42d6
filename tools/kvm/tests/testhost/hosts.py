"""The L1 test hosts, one per architecture (Debian's names), as QEMU TCG
guests on any machine: what differs between them is data, here; session.py
boots any of them the same way."""

from collections.abc import Callable
from dataclasses import dataclass

from . import l1, l1arm64, l1ppc64

DEFAULT = "amd64"


@dataclass(frozen=True)
class HostConfig:
    """How one L1 runs: its architecture and the knobs the hang soak
    compares (see scripts/testhost.py soak)."""

    arch: str = DEFAULT
    cpus: int | None = None           # None: the host's own default
    mem: str | None = None            # None: the host's own default
    tcg_thread: str = "multi"         # QEMU's -accel tcg,thread=
    kvm_amd: str = "nested=1 npt=1"   # amd64: kvm_amd's module parameters
    kernel: str = "stable"            # amd64: one of l1.KERNELS
    qemu: str | None = None           # one of qemu.SOURCES; None: the host's own default


@dataclass(frozen=True)
class L1Host:
    qemu: str  # the QEMU binary ...
    package: str  # ... and the Debian package that has it ...
    machine: tuple[str, ...]  # QEMU's machine and CPU options
    console: str  # the kernel's name for the serial port QEMU's -serial makes
    control: tuple[str, ...]  # QEMU options putting chardev "ctl" on a port ...
    control_dev: str  # ... and its device in L1
    mem: str  # default memory size ...
    cpus: int  # ... and number of CPUs
    prepare: Callable[[HostConfig], l1.L1Assets]
    qemu_source: str = "stable"  # ... from the suite of qemu.SOURCES named


HOSTS = {
    # Emulated SVM; -cpu max is AMD-style with svm, npt and vgif.
    "amd64": L1Host(
        qemu="qemu-system-x86_64",
        package="qemu-system-x86",
        machine=("-cpu", "max"),
        console="ttyS0",
        control=("-serial", "chardev:ctl"),
        control_dev="/dev/ttyS1",
        mem="4G",
        # Two CPUs. One CPU passed every soak session too, but its first
        # full e2e run lost L1's heartbeat twice; neither count shows one
        # better than the other yet (scripts/testhost.py soak compares them).
        cpus=2,
        prepare=l1.prepare,
    ),
    # EL2 for KVM (VHE by default), GICv3 for its vGIC; pauth-impdef=on makes
    # pointer authentication cheap to emulate: the boot takes 4 s, not 15-24.
    # virt has one UART, so the control port is a virtio console.
    "arm64": L1Host(
        qemu="qemu-system-aarch64",
        package="qemu-system-arm",
        machine=("-M", "virt,virtualization=on,gic-version=3", "-cpu", "max,pauth-impdef=on"),
        console="ttyAMA0",
        control=("-device", "virtio-serial-pci", "-device", "virtconsole,chardev=ctl"),
        control_dev="/dev/hvc0",
        mem="2G",
        cpus=2,
        prepare=l1arm64.prepare,
    ),
    # Nested KVM-HV (Debian's kernel has no KVM-PR), which kvm-hv will not
    # load without; VOF, QEMU's small firmware, enters the vmlinux at once
    # where SLOF would take 10-15 s of TCG.  The console is the spapr-vty
    # QEMU's -serial makes (hvc0), the control port a virtio console.
    "ppc64el": L1Host(
        qemu="qemu-system-ppc64",
        package="qemu-system-ppc",
        machine=("-M", "pseries,cap-nested-hv=on,x-vof=on", "-cpu", "POWER9"),
        console="hvc0",
        control=("-device", "virtio-serial-pci", "-device", "virtconsole,chardev=ctl"),
        control_dev="/dev/hvc1",
        mem="2G",
        cpus=2,
        prepare=l1ppc64.prepare,
    ),
}
