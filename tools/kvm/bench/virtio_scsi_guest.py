#!/usr/bin/env python3
"""virtio-scsi as a Linux guest sees it: lkvm's adapter and SCSI target
against QEMU's virtio-scsi-pci with a scsi-hd, same kernel (the one `make
guest-kernel` builds, SCSI_VIRTIO and BLK_DEV_SD built in), same rootfs,
same guest init, a fresh preallocated raw image each.

    virtio_scsi_guest.py [-m MIB] [-k KIB]

The guest runs virtio_blk_guest.py's dd tests on /dev/sda (1 MiB and
4 KiB blocks, O_DIRECT, writes ending in an fsync), with the same host
caching on both sides (lkvm's buffered image, QEMU's cache=writeback),
and the same retries of a boot that never gets going.  Where this host's
KVM can't run Linux guests, everything runs inside the nested test host
(L1).  Prints MB/s per VMM and the lkvm/QEMU ratios; the goal is 0.9.
"""

import os
import sys
import tempfile

KVMDIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, KVMDIR)

import virtio_blk_guest as blk  # noqa: E402
from _sandbox import LKVM, RAM_MIB, qemu_on_rootfs  # noqa: E402

from rootfs import tree  # noqa: E402

DISK = "/dev/sda"
GOAL = 0.9


def guest_command(mib: int, kib: int) -> list[str]:
    """virtio-blk's guest script, on the SCSI disk."""
    sh, flag, script = blk.guest_command(mib, kib)
    return [sh, flag, script.replace(blk.DISK, DISK)]


def lkvm(kernel: str, image: str, mib: int, kib: int) -> list[str]:
    return [LKVM, "sandbox", "-k", kernel, "-m", RAM_MIB, "-c", "1", "-p", "quiet",
            "-d", tree.DEFAULT, "-d", f"scsi:{image}", "--", *guest_command(mib, kib)]


def qemu(kernel: str, image: str, mib: int, kib: int) -> list[str]:
    return qemu_on_rootfs(kernel, guest_command(mib, kib), extra=[
        "-drive", f"file={image},format=raw,if=none,id=d0,cache=writeback",
        "-device", "virtio-scsi-pci,id=scsi0", "-device", "scsi-hd,drive=d0,bus=scsi0.0"])


VMMS = {"lkvm": lkvm, "qemu": qemu}


def inner(kernel: str, mib: int, kib: int) -> dict[str, dict[str, float]]:
    results = {}
    with tempfile.TemporaryDirectory(prefix="lkvm-bench-") as home:
        os.environ["HOME"] = home
        tree.prepare(tree.DEFAULT)
        for vmm, command in VMMS.items():
            for _ in range(blk.ATTEMPTS):
                with tempfile.TemporaryDirectory() as tmp:
                    image = os.path.join(tmp, "disk.raw")
                    blk.raw_image(image, max(mib << 20, kib << 10))
                    started, got = blk.measure(f"{vmm} scsi", command(kernel, image, mib, kib))
                if got is not None:
                    results[vmm] = got
                if started:
                    break
    return results


def report(results: dict[str, dict[str, float]], mib: int, kib: int) -> None:
    print(f"virtio-scsi in a Linux guest (dd, O_DIRECT: {mib} MiB in 1 MiB blocks, "
          f"{kib} KiB in 4 KiB blocks), MB/s; goal lkvm/qemu >= {GOAL}:")
    print("                 " + "".join(f"{name:>10s}" for name, _ in blk.TESTS))
    for row, got in results.items():
        print(f"  {row:15s}" + "".join(f"{got[name]:10.1f}" for name, _ in blk.TESTS))
    lk, qe = results.get("lkvm"), results.get("qemu")
    if lk and qe:
        print(f"  {'lkvm/qemu':15s}" +
              "".join(f"{lk[name] / qe[name]:10.2f}" for name, _ in blk.TESTS))


def main(argv: list[str] | None = None) -> int:
    return blk.bench_main(argv, __file__, inner, report, len(VMMS))


if __name__ == "__main__":
    sys.exit(main())
