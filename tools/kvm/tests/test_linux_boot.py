"""Real Linux guests on every boot path (e2e: through the nested test
host where this KVM can't run them).  Each boot is a test-host job of its
own, so a test host that dies under one costs that boot's rerun only, and
each is checked for what a user would see: the marker from init, the
command line, the CPU count, the memory map, and how lkvm ended."""

import shlex
from collections.abc import Callable

import pytest

from tests.helpers import LKVM
from tests.testhost import (
    backports_guest_kernel,
    guest_kernel,
    guest_vmlinux,
    kvmconfig_kernel,
    make_initrd,
)

pytestmark = pytest.mark.e2e

RAM_MIB = 256
GUEST_SCRIPT = r"""
echo "MARK cmdline=$(cat /proc/cmdline)"
echo "MARK cpus=$(grep -c ^processor /proc/cpuinfo)"
echo "MARK memmap_end=$(sort /sys/firmware/memmap/*/end | tail -n 1)"
case "$(cat /proc/cmdline)" in
*lkvm.end=reboot*) exit 0 ;;
*lkvm.end=panic*) echo c > /proc/sysrq-trigger ;;
esac
poweroff -f
"""
# 10-25 s in an idle L1, about 80 s on a machine loaded 3.5 times over.
BOOT_TIMEOUT = 180
# A boot that ignores the SIGTERM at BOOT_TIMEOUT is killed this much
# later, and the job is given up on a little after that.
KILL_AFTER = 10

# name: (kernel, lkvm options); -p is quiet unless given
CASES = {
    "realmode-1-noacpi": ("bzimage", "--boot-mode realmode -c 1 --no-acpi"),
    "realmode-2": ("bzimage", "--boot-mode realmode -c 2"),
    "64-1": ("bzimage", "--boot-mode 64 -c 1"),
    "64-2": ("bzimage", "-c 2"),
    "pvh-1": ("vmlinux", "-c 1"),
    "pvh-2": ("vmlinux", "--boot-mode pvh -c 2"),
    "reboot": ("bzimage", "-c 1 -p 'quiet lkvm.end=reboot'"),
    "panic": ("bzimage", "-c 1 -p 'quiet lkvm.end=panic'"),
    "kvmconfig-2": ("kvmconfig", "-c 2"),
    # Debian's newer kernel (6.12, from bookworm-backports; the marks need
    # none of the initrd's 6.1 modules), in the test host that runs it.
    "backports-2": ("backports", "-c 2"),
}


@pytest.fixture(scope="module")
def boot(l2host, l2host_backports) -> Callable[[str], tuple[int, str]]:
    """boot(case) -> (lkvm's status, what it and the guest printed)."""
    kernels = {"bzimage": guest_kernel(), "vmlinux": guest_vmlinux(),
               "kvmconfig": kvmconfig_kernel(), "backports": backports_guest_kernel()}
    initrd = make_initrd(GUEST_SCRIPT)

    def run(name: str) -> tuple[int, str]:
        kernel, opts = CASES[name]
        if kernels[kernel] is None:
            pytest.skip("no kvmconfig kernel: make guest-kernel")
        args = shlex.split(opts)
        cmd = ["timeout", "-k", str(KILL_AFTER), str(BOOT_TIMEOUT),
               LKVM, "run", "-k", str(kernels[kernel]), "-i", str(initrd),
               "-m", str(RAM_MIB), *args, *([] if "-p" in args else ["-p", "quiet"])]
        host = l2host_backports if kernel == "backports" else l2host
        r = host.run(cmd, timeout=BOOT_TIMEOUT + 2 * KILL_AFTER)
        return r.returncode, r.stdout + r.stderr

    return run


def _marks(output: str) -> dict[str, str]:
    return dict(line.split(" ", 1)[1].split("=", 1) for line in output.splitlines()
                if line.startswith("MARK "))


@pytest.mark.parametrize("name", [n for n in CASES if n not in ("reboot", "panic",
                                                                "kvmconfig-2", "backports-2")])
def test_boot_reports_and_powers_off(boot, name) -> None:
    check_powered_off(boot, name)


def check_powered_off(boot, name: str) -> None:
    rc, out = boot(name)
    assert rc == 0, out
    marks = _marks(out)
    cpus = int(name.split("-")[1])
    assert marks["cpus"] == str(cpus), out
    assert marks["memmap_end"] == hex(RAM_MIB * 2**20 - 1), out
    acpi = "noacpi" not in name
    expected = ("noapic " + ("" if acpi else "noacpi ") + "pci=conf1,noearly reboot=k panic=1 "
                "i8042.direct=1 i8042.dumbkbd=1 i8042.nopnp=1 earlyprintk=serial "
                "i8042.noaux=1 console=ttyS0 root=/dev/vda rw quiet")
    assert marks["cmdline"] == expected
    assert "KVM session ended normally" in out
    assert "testhost-l2: exit" not in out  # it powered off, not the init's reboot


def test_kvmconfig_kernel_boots_smp(boot) -> None:
    rc, out = boot("kvmconfig-2")
    assert rc == 0, out
    assert _marks(out)["cpus"] == "2", out


def test_guest_reboot_ends_lkvm_with_0(boot) -> None:
    rc, out = boot("reboot")
    assert rc == 0, out
    assert "testhost-l2: exit 0" in out


def test_guest_panic_ends_lkvm_nonzero_with_the_panic_shown(boot) -> None:
    rc, out = boot("panic")
    assert rc != 0, out
    assert "Kernel panic - not syncing" in out


def test_a_newer_kernel_boots(boot) -> None:
    """Last in the file: its test host closes after it."""
    check_powered_off(boot, "backports-2")
