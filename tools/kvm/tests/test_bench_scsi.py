"""The virtio-scsi guest bench's command lines and report, without its
measurement (it boots Linux guests, which only `make bench` does)."""

from rootfs import tree
from tests.test_bench_blk import load


def test_both_vmms_get_the_image_as_a_scsi_disk(tmp_path, lkvm_home, capsys):
    bench = load("virtio_scsi_guest")
    image = str(tmp_path / "disk.raw")
    lkvm = bench.lkvm("bzImage", image, 1, 4)
    assert f"scsi:{image}" in lkvm
    script = lkvm[-1]
    assert "of=/dev/sda" in script and "/dev/vda" not in script
    qemu = " ".join(bench.qemu("bzImage", image, 1, 4))
    assert f"file={image},format=raw," in qemu and "scsi-hd,drive=d0,bus=scsi0.0" in qemu
    root = tree.prepare(tree.DEFAULT)       # where QEMU's guest finds its script
    with open(f"{root}/virt/sandbox.sh") as f:
        assert "of=/dev/sda" in f.read()
    results = {vmm: {name: 90.0 if vmm == "lkvm" else 100.0 for name, _ in bench.blk.TESTS}
               for vmm in bench.VMMS}
    bench.report(results, 1, 4)
    assert "lkvm/qemu            0.90      0.90" in capsys.readouterr().out
