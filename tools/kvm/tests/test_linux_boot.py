"""Real Linux guests on every boot path (e2e: through the nested test
host where this KVM can't run them).  All boots run as one batch in one
test-host command, each checked for what a user would see: the marker
from init, the command line, the CPU count, the memory map, and how lkvm
ended."""

import shlex

import pytest

from tests.helpers import LKVM
from tests.testhost import guest_kernel, guest_vmlinux, kvmconfig_kernel, make_initrd

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
# later, so one hung lkvm fails its own case, not the whole batch.
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
}


@pytest.fixture(scope="module")
def boots(l2host, tmp_path_factory) -> dict[str, tuple[int, str]]:
    kernels = {"bzimage": guest_kernel(), "vmlinux": guest_vmlinux()}
    cases = dict(CASES)
    if (tiny := kvmconfig_kernel()) is not None:
        kernels["kvmconfig"] = tiny
        cases["kvmconfig-2"] = ("kvmconfig", "-c 2")
    initrd = make_initrd(GUEST_SCRIPT)
    lines = []
    for name, (kernel, opts) in cases.items():
        cmd = f"{shlex.quote(LKVM)} run -k {kernels[kernel]} -i {initrd} -m {RAM_MIB} {opts}"
        lines += [f"echo '@@@ case {name}'",
                  f"timeout -k {KILL_AFTER} {BOOT_TIMEOUT} {cmd}"
                  f"{'' if ' -p ' in opts else ' -p quiet'} 2>&1 </dev/null",
                  "echo \"@@@ rc $?\""]
    script = tmp_path_factory.mktemp("boots") / "boots.sh"
    script.write_text("\n".join(lines) + "\n")
    r = l2host.run(["bash", str(script)], timeout=(BOOT_TIMEOUT + KILL_AFTER) * len(cases))
    results, name, out = {}, None, []
    for line in r.stdout.splitlines():
        if line.startswith("@@@ case "):
            name, out = line.split()[2], []
        elif line.startswith("@@@ rc ") and name:
            results[name] = (int(line.split()[2]), "\n".join(out))
        else:
            out.append(line)
    return results


def _marks(output: str) -> dict[str, str]:
    return dict(line.split(" ", 1)[1].split("=", 1) for line in output.splitlines()
                if line.startswith("MARK "))


@pytest.mark.parametrize("name", [n for n in CASES if n not in ("reboot", "panic")])
def test_boot_reports_and_powers_off(boots, name) -> None:
    rc, out = boots[name]
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


def test_kvmconfig_kernel_boots_smp(boots) -> None:
    if "kvmconfig-2" not in boots:
        pytest.skip("no kvmconfig kernel: make guest-kernel")
    rc, out = boots["kvmconfig-2"]
    assert rc == 0, out
    assert _marks(out)["cpus"] == "2", out


def test_guest_reboot_ends_lkvm_with_0(boots) -> None:
    rc, out = boots["reboot"]
    assert rc == 0, out
    assert "testhost-l2: exit 0" in out


def test_guest_panic_ends_lkvm_nonzero_with_the_panic_shown(boots) -> None:
    rc, out = boots["panic"]
    assert rc != 0, out
    assert "Kernel panic - not syncing" in out
