"""The ppc64 test host: Debian's ppc64el kernel under QEMU's TCG pseries
with nested KVM-HV, whose /dev/kvm lkvm's ppc64le bindings drive; and the
parts of it that run anywhere."""

import time
from pathlib import Path

import pytest

from tests.helpers import KVMDIR
from tests.testhost import debs
from tests.testhost.hosts import HOSTS

# Run by python3 in tools/kvm on the ppc64 host: which bindings it loaded,
# and what KVM answers, one line each ("NAME value").
PROBE = """
import os
import include._uapi
from include.uapi import lib

print("bindings", os.path.basename(include._uapi.__file__))
kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
print("KVM_GET_API_VERSION", lib.lkvm_ioctl(kvm, lib.KVM_GET_API_VERSION, 0))
vm = lib.lkvm_ioctl(kvm, lib.KVM_CREATE_VM, 0)
print("KVM_CREATE_VM", "ok" if vm >= 0 else "failed")
for cap in ("KVM_CAP_PPC_PAPR", "KVM_CAP_PPC_MMU_RADIX"):
    print(cap, lib.lkvm_ioctl(vm, lib.KVM_CHECK_EXTENSION, getattr(lib, cap)))
"""


@pytest.mark.e2e
def test_ppc64_bindings_drive_ppc64_kvm(ppc64host) -> None:
    start = time.monotonic()
    r = ppc64host.run(["python3", "-c", PROBE], timeout=120, cwd=KVMDIR)
    print(f"ppc64 host: boot and probe in {time.monotonic() - start:.1f} s")
    assert r.returncode == 0, r.stderr
    found = dict(line.split(" ", 1) for line in r.stdout.splitlines())
    assert found["bindings"].endswith("-powerpc64le-linux-gnu.so")
    assert found["KVM_GET_API_VERSION"] == "12"
    assert found["KVM_CREATE_VM"] == "ok"
    assert found["KVM_CAP_PPC_PAPR"] == "1"  # KVM-HV, not PR: sPAPR guests
    assert found["KVM_CAP_PPC_MMU_RADIX"] == "1"


def test_ppc64_host_is_pseries_with_nested_hv() -> None:
    machine = " ".join(HOSTS["ppc64el"].machine)
    # Without nested HV kvm-hv refuses to load; without VOF, SLOF's boot
    # costs 10-15 s of TCG.
    assert "cap-nested-hv=on" in machine and "x-vof=on" in machine
    assert HOSTS["ppc64el"].console == "hvc0"


@pytest.fixture
def apt_update(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """A private apt state made under tmp_path by an `apt-get update` that
    fetches the lists `fetched` names, then fails as a half-synced mirror
    makes it fail."""
    fetched: list[str] = []

    def run(*args: str, cwd: Path | None = None) -> str:
        lists = Path(next(a for a in args if a.startswith("-oDir::State::Lists=")).split("=")[1])
        for name in fetched:
            (lists / name).touch()
        raise debs.TestHostError("apt-get update failed:\nE: Failed to fetch ... "
                            "File has unexpected size (343384 != 365588)")

    monkeypatch.setattr(debs, "_run", run)
    monkeypatch.setattr(debs, "host_arch", lambda: "amd64")
    monkeypatch.setattr(debs.cache, "root", lambda: tmp_path)
    debs._state.cache_clear()
    yield fetched
    debs._state.cache_clear()


def test_private_state_survives_one_broken_index(apt_update: list[str]) -> None:
    apt_update.append("deb.debian.org_debian_dists_bookworm_main_binary-ppc64el_Packages.lz4")
    state = debs._state("ppc64el")
    assert state is not None and state.is_dir()


def test_private_state_without_any_index_fails(apt_update: list[str]) -> None:
    with pytest.raises(debs.TestHostError, match="unexpected size"):
        debs._state("ppc64el")
