"""What the arm64 and ppc64 boot benches share: Debian's kernel of that
arch booted to init under lkvm and under that arch's QEMU, interleaved in
that arch's test host, then one lkvm boot with --debug-exits."""

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from boot import MARKER, report, time_to_marker

from tests.testhost import make_initrd
from tests.testhost.runner import run_bench

TIMEOUT = 300   # a boot takes tens of seconds in the emulated hosts


@dataclass(frozen=True)
class ForeignBoot:
    arch: str                                   # Debian's name, as the test host takes it
    kernel: Callable[[], Path]                  # Debian's kernel of that arch, unpacked
    qemu: Callable[[], Path]                    # its QEMU, unpacked in the test host's cache
    qemu_libs: tuple[str, ...]                  # the library directories under that
    vmms: Callable[[str, str, str], dict[str, list[str]]]  # (kernel, initrd, qemu) -> commands


def exit_stats(cmd: list[str]) -> str:
    """lkvm's --debug-exits table of one whole boot (the guest reboots
    after its marker, which ends lkvm)."""
    done = subprocess.run([*cmd, "--debug-exits"], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=TIMEOUT)
    return done.stderr[done.stderr.find("  Exits handled"):]


def inner(bench: ForeignBoot, name: str, runs: int, kernel: str, initrd: str,
          qemu_dir: str) -> dict:
    cmds = bench.vmms(kernel, initrd, qemu_dir)
    libs = ":".join(os.path.join(qemu_dir, d) for d in bench.qemu_libs)
    times: dict[str, list[float | None]] = {vmm: [] for vmm in cmds}
    for _ in range(runs):   # interleaved, so drift hits both alike
        for vmm, cmd in cmds.items():
            try:
                times[vmm].append(time_to_marker(cmd, TIMEOUT, {"LD_LIBRARY_PATH": libs}))
            except RuntimeError as e:
                print(f"{name}: {vmm}: {e}", file=sys.stderr)
                times[vmm].append(None)
    return {"times": times, "exits": exit_stats(cmds["lkvm"])}


def main(bench: ForeignBoot, script: str, argv: list[str] | None = None) -> int:
    """The bench `script` (whose docstring describes it): here, it starts
    itself in the test host with --inner; there, it measures."""
    name = os.path.basename(script)
    doc = sys.modules["__main__"].__doc__ or name
    ap = argparse.ArgumentParser(prog=name, description=doc.splitlines()[0])
    ap.add_argument("-n", "--runs", type=int, default=3)
    ap.add_argument("--inner", nargs=3, metavar=("KERNEL", "INITRD", "QEMU"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.inner:
        print(json.dumps(inner(bench, name, args.runs, *args.inner)))
        return 0
    files = [str(bench.kernel()),
             str(make_initrd(f"echo {MARKER.decode()}\n", modules=False, arch=bench.arch)),
             str(bench.qemu())]
    result = run_bench(script, ["-n", str(args.runs), "--inner", *files],
                       timeout=TIMEOUT * 3 * (args.runs + 1), arch=bench.arch)
    report(result["times"])
    print(result["exits"])
    return 0
