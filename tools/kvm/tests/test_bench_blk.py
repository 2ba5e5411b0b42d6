"""The virtio-blk benches' code paths, without their measurements: the
device-model bench on tiny images, the guest bench's images, command
lines and report (it boots Linux guests, which only `make bench` does)."""

import importlib.util
import os
import shutil
import subprocess
import sys

import pytest

from disk.core import open_disk
from disk.qcow2 import Qcow2
from tests.helpers import KVMDIR

BENCH = os.path.join(KVMDIR, "bench")
needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="no qemu-img")


def load(name: str):
    sys.path.insert(0, BENCH)       # as when run: its siblings import as modules
    try:
        spec = importlib.util.spec_from_file_location(name, os.path.join(BENCH, f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(BENCH)


@needs_qemu_img
def test_device_model_bench_measures_raw_and_qcow2(tmp_path):
    bench = load("virtio_blk")
    assert list(bench.formats()) == ["raw", "qcow2"]
    for fmt, make in bench.formats().items():
        path = str(tmp_path / f"bench.{fmt}")
        make(path, 2 << 20)
        rows = bench.measure(path, 2 << 20)
        assert [req for req, _, _ in rows] == [4096, 1 << 20]
        assert all(w > 0 and r > 0 for _, w, r in rows)
    subprocess.run(["qemu-img", "check", str(tmp_path / "bench.qcow2")], check=True,
                   capture_output=True, timeout=60)


@needs_qemu_img
def test_guest_bench_has_a_qcow2_row_against_qemu(tmp_path, capsys):
    bench = load("virtio_blk_guest")
    assert list(bench.formats()) == ["raw", "qcow2"]
    image = str(tmp_path / "disk.qcow2")
    bench.formats()["qcow2"](image, 4 << 20)
    disk = open_disk(image)
    assert isinstance(disk, Qcow2) and disk.size == 4 << 20
    disk.close()
    assert f"file={image},format=qcow2," in " ".join(bench.qemu("bzImage", image, "qcow2", 1, 4))
    assert image in bench.lkvm("bzImage", image, "qcow2", 1, 4)
    results = {f"{vmm} {fmt}": {name: 100.0 if vmm == "lkvm" else 50.0
                                for name, _ in bench.TESTS}
               for fmt in bench.FORMATS for vmm in bench.VMMS}
    bench.report(results, 1, 4)
    out = capsys.readouterr().out
    assert "lkvm qcow2" in out and "qemu qcow2" in out
    assert "lkvm/qemu qcow2" in out and "lkvm/qemu raw" in out and "2.00" in out
