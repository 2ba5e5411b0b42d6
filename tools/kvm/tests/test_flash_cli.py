"""-F/--flash as a user meets it: kvmtool's option and help text, the file
checked before any VM exists (one line and kvmtool's status 128 for a
bad one), the flash in the arm64 run configuration, and x86, which has
no flash, running its guest with a warning as kvmtool ignores the option.

This x86 host cannot run an arm64 lkvm: the arm64 command line runs here
with os.uname() saying aarch64, and stops before KVM is opened."""

import subprocess
import sys

import pytest

from arm.arch import Arm64
from arm.layout import FLASH_BASE, FLASH_MAX_SIZE
from cli.cmd import load_builtin
from hw.cfi_flash import BLOCK_SIZE
from kvm import arch as arch_loader
from kvm.errors import KVMTOOL_DIE
from tests.helpers import KVMDIR, TINY_TIMEOUT, guest, run_lkvm

run = load_builtin("run")

# lkvm.py ARGS as an arm64 host runs it.
AS_ARM64 = """
import os, runpy, sys
real = os.uname()
os.uname = lambda: os.uname_result((*real[:4], "aarch64"))
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def lkvm_arm64(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", AS_ARM64, f"{KVMDIR}/lkvm.py", *args],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=TINY_TIMEOUT)


@pytest.fixture
def firmware(tmp_path):
    path = tmp_path / "fw.bin"
    path.write_bytes(b"\x00" * 4096)
    return str(path)


def test_help_lists_the_option():
    r = run_lkvm("run", "--help")
    kernel = r.stdout.decode().split("Kernel options:")[1].split("Networking options:")[0]
    assert "-F, --flash <flash>" in kernel, kernel
    assert "Flash image to present to virtual machine" in kernel


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "No such file or directory"),
    (lambda p: p.mkdir(), "Is a directory"),
    (lambda p: p.write_bytes(b"\xff" * 4096), "4096 bytes, less than one 64 KiB erase block"),
])
def test_arm64_bad_flash_is_one_line(tmp_path, firmware, make, message):
    flash = tmp_path / "flash.img"
    make(flash)
    r = lkvm_arm64("run", "-f", firmware, "-F", str(flash))
    assert r.returncode == KVMTOOL_DIE, r.stderr
    assert r.stderr == f"  Fatal: --flash {flash}: {message}\n"


def test_arm64_flash_in_the_configuration(tmp_path, firmware, monkeypatch, capsys):
    monkeypatch.setattr(arch_loader, "load", lambda: Arm64)
    flash = tmp_path / "vars.img"
    flash.write_bytes(b"\xff" * (3 * BLOCK_SIZE))
    cfg = run.configure(["-f", firmware, "-m", "64", "-c", "1", "--flash", str(flash)])
    assert (cfg.flash, cfg.flash_size) == (str(flash), 2 * BLOCK_SIZE)
    assert "only the first 131072 bytes of 196608 are used" in capsys.readouterr().err
    # The short option too; a file over the window is cut to it.
    with open(flash, "r+b") as f:
        f.truncate(2 * FLASH_MAX_SIZE)
    assert run.configure(["-f", firmware, "-F", str(flash)]).flash_size == FLASH_MAX_SIZE
    assert run.configure(["-f", firmware]).flash is None
    assert Arm64.FLASH == (FLASH_BASE, FLASH_MAX_SIZE)


def test_x86_ignores_the_flash_and_says_so(tmp_path):
    flash = tmp_path / "flash.img"
    flash.write_bytes(b"\xff" * BLOCK_SIZE)
    r = run_lkvm("run", "-c", "1", "-m", "16", "-F", str(flash), guest("hello"))
    err = r.stderr.decode()
    assert r.returncode == 0, err
    assert f"  Warning: --flash {flash}: this architecture's guests have no CFI flash; " \
           "ignored\n" in err
    assert b"Hello, lkvm!" in r.stdout
    assert flash.read_bytes() == b"\xff" * BLOCK_SIZE
