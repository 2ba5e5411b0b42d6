#!/usr/bin/env python3
"""The e2e test host from the command line.

scripts/testhost.py prepare [--arch A]   fill the cache (kernels, initramfs)
scripts/testhost.py needed               does this host need L1? (exit 0 if so)
scripts/testhost.py run [--arch A] [-t S] -- CMD…
                                         run CMD in L1; exit with its status
scripts/testhost.py console -- CMD…      run CMD in L1 on this terminal (make run)
scripts/testhost.py guest-kernel         print the L2 guest kernel's path
scripts/testhost.py initrd SCRIPT        print the path of an L2 initramfs running SCRIPT
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools" / "kvm"))

from tests import testhost
from tests.testhost import probe
from tests.testhost.hosts import DEFAULT, HOSTS


def cmd_prepare(args: argparse.Namespace) -> int:
    start = time.monotonic()
    assets = HOSTS[args.arch].prepare()
    print(f"L1 kernel     {assets.kernel}\nL1 initrd     {assets.initrd}")
    for tag, path in assets.shares.items():
        print(f"L1 {tag:<10} {path}")
    if args.arch == DEFAULT:  # the L2 guests' kernel is x86's for now
        print(f"guest kernel  {testhost.guest_kernel()}")
    print(f"ready in {time.monotonic() - start:.1f} s")
    return 0


def cmd_needed(args: argparse.Namespace) -> int:
    halted, ns = probe.measure()
    how = f"{ns / 1e6:.3f} ms" if halted else f"did not halt ({ns / 1e6:.3f} ms)"
    print(f"CPL0 probe: {how}; threshold {probe.THRESHOLD_NS / 1e6:.0f} ms")
    needed = testhost.needed()
    print("L1 needed" if needed else "L1 not needed")
    return 0 if needed else 1


def cmd_run(args: argparse.Namespace) -> int:
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        sys.exit("testhost run: no command given")
    with testhost.Session(arch=args.arch, cpus=args.cpus, mem=args.mem) as session:
        print(f"testhost: L1 booted in {session.boot_seconds:.1f} s", file=sys.stderr)
        start = time.monotonic()
        result = session.run(cmd, args.timeout)
        took = time.monotonic() - start
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    print(f"testhost: exit {result.returncode} after {took:.1f} s", file=sys.stderr)
    return result.returncode


def cmd_console(args: argparse.Namespace) -> int:
    """CMD on L1's console, which is this terminal: for a person, not a test."""
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        sys.exit("testhost console: no command given")
    print("testhost: booting the nested host (L1) ...", file=sys.stderr)
    with testhost.Session(cpus=args.cpus, mem=args.mem, interactive=True) as session:
        return session.run(cmd, args.timeout).returncode


def cmd_guest_kernel(args: argparse.Namespace) -> int:
    print(testhost.guest_kernel())
    return 0


def cmd_initrd(args: argparse.Namespace) -> int:
    print(testhost.make_initrd(Path(args.script).read_text()))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    arch = argparse.ArgumentParser(add_help=False)
    arch.add_argument("--arch", choices=sorted(HOSTS), default=DEFAULT,
                      help=f"the L1 test host's architecture (default {DEFAULT})")
    prepare = sub.add_parser("prepare", help="fill the cache", parents=[arch])
    prepare.set_defaults(func=cmd_prepare)
    sub.add_parser("needed", help="probe /dev/kvm").set_defaults(func=cmd_needed)
    run = sub.add_parser("run", help="run a command in L1", parents=[arch])
    run.add_argument("-t", "--timeout", type=float, default=600.0)
    run.add_argument("-c", "--cpus", type=int, default=2)
    run.add_argument("-m", "--mem", help="L1's memory (default: 4G on amd64, 2G on arm64)")
    run.add_argument("cmd", nargs=argparse.REMAINDER)
    run.set_defaults(func=cmd_run)
    console = sub.add_parser("console", help="run a command in L1 on this terminal")
    console.add_argument("-t", "--timeout", type=float, default=24 * 3600.0)
    console.add_argument("-c", "--cpus", type=int, default=2)
    console.add_argument("-m", "--mem", default="4G")
    console.add_argument("cmd", nargs=argparse.REMAINDER)
    console.set_defaults(func=cmd_console)
    kernel = sub.add_parser("guest-kernel", help="print the L2 kernel's path")
    kernel.set_defaults(func=cmd_guest_kernel)
    initrd = sub.add_parser("initrd", help="build an L2 initramfs")
    initrd.add_argument("script", help="shell script the guest runs")
    initrd.set_defaults(func=cmd_initrd)
    args = parser.parse_args()
    try:
        return args.func(args)
    except testhost.TestHostError as e:
        sys.exit(f"testhost: {e}")


if __name__ == "__main__":
    sys.exit(main())
