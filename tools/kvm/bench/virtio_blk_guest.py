#!/usr/bin/env python3
"""virtio-blk as a Linux guest sees it: lkvm's device against QEMU's, same
kernel (the one `make guest-kernel` builds), same rootfs, same guest init.

    virtio_blk_guest.py [-m MIB] [-k KIB]

Each VMM boots a rootfs made as `lkvm setup` makes it, with one disk,
/dev/vda: a raw image, then a qcow2 one (version 3, 64 KiB clusters, made
empty by qemu-img, so the writes time cluster allocation and its
refcount updates in each VMM).  In the guest, the host's dd (through the
rootfs's links into /host) writes then reads MIB MiB with 1 MiB blocks,
then KIB KiB with 4 KiB blocks, O_DIRECT so the guest's page cache is
out of the way and every block is a request to the device; the writes
end with an fsync, so a flush to the device is part of their time.
MB/s is bytes over seconds from dd's own summary.  Where this host's
KVM can't run Linux guests (nested PVM), everything runs inside the
nested test host (L1).  Prints MB/s per VMM and lkvm/QEMU ratios.

Host caching is the same for both: lkvm opens the image as it does
unless `,direct` is given (buffered, guest flushes become fsync), and
QEMU gets cache=writeback, its default, the same thing (buffered,
flushes become fdatasync).  QEMU's cache=none against lkvm's buffered
I/O would set one VMM's disk against the other's page cache.  So this
measures what each VMM adds on the way to the host page cache, not the
host's disk: each VMM gets a freshly made image (a raw one preallocated, so the
writes don't time the host file system's block allocation) with
nothing of it cached, and reads back what its own writes just left in
the host page cache.  lkvm probes the qcow2 image's format; QEMU is told
it (format=qcow2, its own default L2 cache size).  Inside L1 the image is
in RAM in any case (L1's root is a tmpfs overlay).
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable

KVMDIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, KVMDIR)

from _sandbox import LKVM, RAM_MIB, qemu_on_rootfs  # noqa: E402

from rootfs import tree  # noqa: E402
from tests.testhost import kvmconfig_kernel  # noqa: E402
from tests.testhost.runner import run_bench  # noqa: E402

TIMEOUT = 300          # one boot and measurement
ATTEMPTS = 3
DISK = "/dev/vda"
# (name, dd operands); count is filled in from -m or -k.
TESTS = (
    ("write-1M", f"if=/dev/zero of={DISK} bs=1M count={{mib}} oflag=direct conv=fsync"),
    ("read-1M", f"if={DISK} of=/dev/null bs=1M count={{mib}} iflag=direct"),
    ("write-4k", f"if=/dev/zero of={DISK} bs=4k count={{pages}} oflag=direct conv=fsync"),
    ("read-4k", f"if={DISK} of=/dev/null bs=4k count={{pages}} iflag=direct"),
)
# dd's last line on stderr: "N bytes (...) copied, S s, R MB/s", or
# "N bytes copied, ..." when N is small; S may come in %g's e-notation.
SUMMARY = re.compile(r"BENCH (\S+) (\d+) bytes\b.* copied, ([0-9.e+-]+) s,")


def guest_command(mib: int, kib: int) -> list[str]:
    """sh -c SCRIPT: a BENCH line once the guest runs it, which tells a
    boot that never got going from a failed measurement, then one per
    test with dd's summary; on a failure, dd's messages and exit 1."""
    lines = ["echo BENCH start", f"[ -b {DISK} ] || {{ echo 'no {DISK}'; exit 1; }}"]
    for name, operands in TESTS:
        lines += [f"out=$(dd {operands.format(mib=mib, pages=kib // 4)} 2>&1)"
                  ' || { echo "$out"; exit 1; }',
                  f'echo "BENCH {name} $(echo "$out" | tail -n 1)"']
    return ["sh", "-c", "\n".join(lines)]


def lkvm(kernel: str, image: str, fmt: str, mib: int, kib: int) -> list[str]:
    # No format to give: lkvm tells it by the image's magic.
    # -d default: a disk alone would be booted as the root, as in kvmtool.
    return [LKVM, "sandbox", "-k", kernel, "-m", RAM_MIB, "-c", "1", "-p", "quiet",
            "-d", tree.DEFAULT, "-d", image, "--", *guest_command(mib, kib)]


def qemu(kernel: str, image: str, fmt: str, mib: int, kib: int) -> list[str]:
    return qemu_on_rootfs(kernel, guest_command(mib, kib), extra=[
        "-drive", f"file={image},format={fmt},if=none,id=d0,cache=writeback",
        "-device", "virtio-blk-pci,drive=d0"])


def measure(name: str, cmd: list[str]) -> tuple[bool, dict[str, float] | None]:
    """(whether the guest got to the measurement, MB/s per test or None
    when some test gave no result)."""
    ended = "ended"
    with tempfile.TemporaryFile("w+", errors="replace") as out:
        try:
            subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                           timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            ended = f"was killed after {TIMEOUT} s"
        out.seek(0)
        text = out.read()
    started = any(x.strip() == "BENCH start" for x in text.splitlines())
    got = {}
    for m in filter(None, map(SUMMARY.search, text.splitlines())):
        size, seconds = int(m[2]), float(m[3])
        got[m[1]] = size / seconds / 1e6 if seconds > 0 else float("inf")
    if len(got) < len(TESTS):
        what = "failed" if started else "never got to the measurement"
        print(f"virtio_blk_guest.py: {name} {what} and {ended}:\n{text[-1500:]}",
              file=sys.stderr)
        return started, None
    return True, got


def raw_image(path: str, size: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)


def qcow2_image(path: str, size: int) -> None:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o",
                    "compat=1.1,cluster_size=65536", path, str(size)], check=True, timeout=60)


# The image formats, in the order measured, and how each is made empty.
FORMATS = {"raw": raw_image, "qcow2": qcow2_image}
VMMS = {"lkvm": lkvm, "qemu": qemu}


def formats() -> dict:
    """The formats this host can make: qcow2 needs qemu-img."""
    return {fmt: make for fmt, make in FORMATS.items()
            if fmt == "raw" or shutil.which("qemu-img")}


def inner(kernel: str, mib: int, kib: int) -> dict[str, dict[str, float]]:
    results = {}
    # A rootfs of its own, and one lkvm's -d default finds.
    with tempfile.TemporaryDirectory(prefix="lkvm-bench-") as home:
        os.environ["HOME"] = home
        tree.prepare(tree.DEFAULT)
        for fmt, make_image in formats().items():
            for vmm, command in VMMS.items():
                # A boot that never gets going (seen in the nested test host)
                # is tried again rather than lose the comparison; a
                # measurement that started and failed would only fail again.
                for _ in range(ATTEMPTS):
                    with tempfile.TemporaryDirectory() as tmp:
                        image = os.path.join(tmp, f"disk.{fmt}")
                        make_image(image, max(mib << 20, kib << 10))
                        started, got = measure(f"{vmm} {fmt}",
                                               command(kernel, image, fmt, mib, kib))
                    if got is not None:
                        results[f"{vmm} {fmt}"] = got
                    if started:
                        break
    return results


def report(results: dict[str, dict[str, float]], mib: int, kib: int) -> None:
    print(f"virtio-blk in a Linux guest (dd, O_DIRECT: {mib} MiB in 1 MiB blocks, "
          f"{kib} KiB in 4 KiB blocks), MB/s:")
    print("                 " + "".join(f"{name:>10s}" for name, _ in TESTS))
    for row, got in results.items():
        print(f"  {row:15s}" + "".join(f"{got[name]:10.1f}" for name, _ in TESTS))
    for fmt in FORMATS:
        lk, qe = results.get(f"lkvm {fmt}"), results.get(f"qemu {fmt}")
        if lk and qe:
            print(f"  {'lkvm/qemu ' + fmt:15s}" +
                  "".join(f"{lk[name] / qe[name]:10.2f}" for name, _ in TESTS))


def bench_main(argv: list[str] | None, script: str, inner: Callable[[str, int, int], dict],
               report: Callable[[dict, int, int], None], expected: int) -> int:
    """The command line of a disk bench run in a guest (this one, and
    virtio_scsi_guest.py's): sizes, then `inner` where the guest kernel
    runs (here or in the nested test host, as --inner), then `report`;
    failing unless all `expected` results came back."""
    module = sys.modules[inner.__module__]
    ap = argparse.ArgumentParser(description=module.__doc__.splitlines()[0])
    ap.add_argument("-m", "--mib", type=int, default=256,
                    help="MiB written and read in 1 MiB blocks")
    ap.add_argument("-k", "--kib", type=int, default=8192,
                    help="KiB written and read in 4 KiB blocks")
    ap.add_argument("--inner", metavar="KERNEL", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.mib < 1 or args.kib < 4:
        ap.error("give at least 1 MiB and 4 KiB")
    if args.inner:
        print(json.dumps(inner(args.inner, args.mib, args.kib)))
        return 0
    kernel = kvmconfig_kernel()
    if kernel is None:
        print(f"{os.path.basename(script)}: no guest kernel with virtio built in: "
              "run make guest-kernel; skipped")
        return 0
    results = run_bench(
        script, ["-m", str(args.mib), "-k", str(args.kib), "--inner", str(kernel)],
        timeout=2 * ATTEMPTS * TIMEOUT + 60)
    report(results, args.mib, args.kib)
    return 0 if len(results) == expected else 1


def main(argv: list[str] | None = None) -> int:
    return bench_main(argv, __file__, inner, report, len(formats()) * len(VMMS))


if __name__ == "__main__":
    sys.exit(main())
