"""The lean start path (issue 19): a command loads the modules of the
devices and options it was given and no others.  Checked by the names
in sys.modules when lkvm exits, never by timing: a sitecustomize put on
PYTHONPATH (which the launcher's exec passes on) writes them out."""

import subprocess
import sys

import pytest

from include.uapi import lib
from kvm import vcpu
from tests.helpers import KVMDIR, TINY_TIMEOUT, guest, run_lkvm

DUMP = """\
import atexit, os, sys

def dump():
    with open(os.environ["LKVM_TEST_MODULES"], "w") as f:
        f.write("\\n".join(sys.modules))

atexit.register(dump)
"""

# Device and back-end modules, each wanted only when an option asks for
# its device; a name ending in "." stands for the whole package.
DEVICE_MODULES = (
    "virtio.9p", "virtio.p9.", "virtio.balloon", "virtio.blk", "virtio.console",
    "virtio.net", "virtio.rng", "virtio.scsi", "virtio.vsock", "virtio.vhost",
    "net.passt", "net.tap", "net.vhost", "scsi.", "disk.", "kvm.gdb.", "x86.gdb",
    "ui.vnc", "kvm.exitstats", "hw.cfi_flash",
)
# Standard modules that cost milliseconds to import and that nothing a
# trivial guest needs calls for.
HEAVY_STDLIB = (
    "platform", "subprocess", "tempfile", "shutil", "secrets", "ipaddress", "ctypes",
    "traceback", "json",
)


def loaded(names: set[str], wanted: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names for w in wanted
                  if n == w or (w.endswith(".") and n.startswith(w)))


@pytest.fixture
def lkvm_imports(tmp_path):
    """lkvm ARGS -> (its exit status, the modules it had loaded)."""
    (tmp_path / "sitecustomize.py").write_text(DUMP)
    out = tmp_path / "modules"

    def run(*args: str) -> tuple[int, set[str]]:
        r = run_lkvm(*args, env={"PYTHONPATH": str(tmp_path), "LKVM_TEST_MODULES": str(out)})
        names = set(out.read_text().split("\n"))
        out.unlink()
        return r.returncode, names
    return run


RUN_HELLO = ("run", "-c", "1", "-m", "16", "--nodefaults")


@pytest.mark.usefixtures("kvm_available", "lkvm_home")
def test_trivial_guest_loads_no_device_module(lkvm_imports):
    status, names = lkvm_imports(*RUN_HELLO, guest("hello"))
    assert status == 0
    assert "virtio.setup" in names and "x86.arch" in names    # the report is read
    assert loaded(names, DEVICE_MODULES) == []
    assert loaded(names, HEAVY_STDLIB) == []


@pytest.mark.usefixtures("kvm_available", "lkvm_home")
def test_an_option_loads_its_device_module(lkvm_imports):
    status, names = lkvm_imports(*RUN_HELLO, "--rng", "--balloon", guest("hello"))
    assert status == 0
    assert {"virtio.rng", "virtio.balloon"} <= names
    assert loaded(names, DEVICE_MODULES) == ["virtio.balloon", "virtio.rng"]


@pytest.mark.parametrize("argv", [("version",), ("list",), ("stop", "-n", "nobody")])
@pytest.mark.usefixtures("lkvm_home")
def test_other_commands_load_no_vm(argv, lkvm_imports):
    _, names = lkvm_imports(*argv)
    assert "kvm.errors" in names    # the report is read
    # No VM, no devices, and not the KVM bindings (the cffi module).
    assert loaded(names, ("kvm.vm", "kvm.vcpu", "virtio.", "x86.", "hw.", "include.",
                          "_cffi_backend")) == []
    assert loaded(names, HEAVY_STDLIB) == []


def test_launcher_runs_no_command_before_python(tmp_path):
    """./lkvm reaches Python with shell built-ins only: with nothing on
    PATH it still runs (a readlink, dirname or ls there is a fork and an
    exec on every start)."""
    r = run_lkvm("version", env={"PATH": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(b"kvm tool ")


def test_exit_names_wait_for_their_first_use():
    """The table of exit names walks all of the bindings' names: made for
    a message, not by importing the vCPU code."""
    r = subprocess.run([sys.executable, "-c", "from kvm import vcpu; "
                        "print(vcpu.exit_names.cache_info().currsize)"],
                       cwd=KVMDIR, capture_output=True, timeout=TINY_TIMEOUT, check=True)
    assert r.stdout == b"0\n"
    names = vcpu.exit_names()
    assert names[lib.KVM_EXIT_HLT] == "KVM_EXIT_HLT" and names[lib.KVM_EXIT_IO] == "KVM_EXIT_IO"
    assert not any(n.startswith("KVM_EXIT_IO_") for n in names.values())
