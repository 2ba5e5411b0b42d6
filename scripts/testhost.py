#!/usr/bin/env python3
"""The e2e test host from the command line.

scripts/testhost.py prepare [--arch A]   fill the cache (kernels, initramfs)
scripts/testhost.py needed               does this host need L1? (exit 0 if so)
scripts/testhost.py run [--arch A] [-t S] -- CMD…
                                         run CMD in L1; exit with its status
scripts/testhost.py console -- CMD…      run CMD in L1 on this terminal (make run)
scripts/testhost.py guest-kernel         print the L2 guest kernel's path
scripts/testhost.py initrd SCRIPT        print the path of an L2 initramfs running SCRIPT
scripts/testhost.py soak [-n N] [L1 options]
                                         N L1 sessions of 2-vCPU Linux boots: pass/fail/hang
scripts/testhost.py soak-e2e [-n N] [-c CPUS] [TEST…]
                                         the e2e test tier (or TESTs) N times: pass/fail/hang
"""

import argparse
import dataclasses
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools" / "kvm"))

from tests import testhost
from tests.helpers import LKVM
from tests.testhost import l1, probe, qemu
from tests.testhost.hosts import DEFAULT, HOSTS

TOP = Path(__file__).resolve().parent.parent


def cmd_prepare(args: argparse.Namespace) -> int:
    start = time.monotonic()
    assets = HOSTS[args.arch].prepare(testhost.HostConfig(arch=args.arch))
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
    config = testhost.HostConfig(arch=args.arch, cpus=args.cpus, mem=args.mem, qemu=args.qemu)
    with testhost.Session(config) as session:
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
    config = testhost.HostConfig(cpus=args.cpus, mem=args.mem, qemu=args.qemu)
    with testhost.Session(config, interactive=True) as session:
        return session.run(cmd, args.timeout).returncode


def cmd_guest_kernel(args: argparse.Namespace) -> int:
    print(testhost.guest_kernel())
    return 0


def cmd_initrd(args: argparse.Namespace) -> int:
    print(testhost.make_initrd(Path(args.script).read_text()))
    return 0


def _config(args: argparse.Namespace) -> testhost.HostConfig:
    return testhost.HostConfig(cpus=args.cpus, mem=args.mem, tcg_thread=args.tcg_thread,
                               kvm_amd=args.kvm_amd, kernel=args.l1_kernel, qemu=args.qemu)


# The soak's workload: what the e2e tier's guests do, in one boot: two vCPUs,
# virtio-blk written and synced, virtio-rng read, a marker at the end.
SOAK_GUEST = """
dd if=/dev/urandom of=/dev/vda bs=64k count=64 conv=fsync 2>/dev/null
head -c 64 /dev/hwrng >/dev/null
echo "soak: ok cpus=$(grep -c ^processor /proc/cpuinfo)"
"""
SOAK_BOOT_TIMEOUT = 300  # generous: the soak looks for hangs of L1, not slow boots


def _soak_script(boots: int, params: str) -> str:
    run = [LKVM, "run", "-k", str(testhost.guest_kernel()),
           "-i", str(testhost.make_initrd(SOAK_GUEST)), "-m", "256", "-c", "2", "--rng",
           "-p", f"console=ttyS0 quiet {params}".strip()]
    lines = ["d=$(mktemp -d)", "truncate -s 8M $d/disk.img"]
    for i in range(boots):
        lines += [f"echo '@@@ boot {i}'",
                  f"timeout -k 10 {SOAK_BOOT_TIMEOUT} {shlex.join(run)} -d $d/disk.img"
                  " </dev/null >$d/out 2>&1",
                  "rc=$?", "tail -n 40 $d/out", "echo \"@@@ rc $rc\""]
    return "\n".join([*lines, "rm -rf $d"]) + "\n"


def cmd_soak(args: argparse.Namespace) -> int:
    """N L1 sessions, each booting Linux with 2 vCPUs under lkvm --boots
    times: a session passes when every boot printed its marker, fails when
    one did not, and hangs when L1 died or the job outlived its limit."""
    config = _config(args)
    script = _soak_script(args.boots, args.params)
    limit = args.boots * (SOAK_BOOT_TIMEOUT + 20)
    counts = {"pass": 0, "fail": 0, "hang": 0}
    times = []
    print(f"soak: {config}, guest parameters {args.params!r}", flush=True)
    for n in range(1, args.sessions + 1):
        start = time.monotonic()
        try:
            with testhost.Session(config) as session:
                r = session.run(["sh", "-c", script], limit, cwd=str(TOP))
            good = r.stdout.count("soak: ok cpus=2")
            verdict = "pass" if good == args.boots else "fail"
            detail = f"{good}/{args.boots} boots reached the marker"
            if verdict == "fail":
                detail += "\n" + r.stdout[-2000:]
        except testhost.L1Error as e:
            verdict, detail = "hang", str(e).splitlines()[0]
            if args.verbose:
                detail = str(e)
        took = time.monotonic() - start
        counts[verdict] += 1
        times.append(took)
        print(f"session {n}/{args.sessions}: {verdict} in {took:.0f} s: {detail}", flush=True)
    summary = {"config": dataclasses.asdict(config), "params": args.params,
               "sessions": args.sessions, **counts,
               "median_s": round(statistics.median(times), 1)}
    print(json.dumps(summary), flush=True)
    return 0 if counts["pass"] == args.sessions else 1


def cmd_soak_e2e(args: argparse.Namespace) -> int:
    """The e2e test tier (or the tests named) N times: a run passes or fails
    by pytest's status; each death of L1 under a job (a hang, then rerun) is
    counted apart."""
    runs = {"pass": 0, "fail": 0}
    hangs = 0
    tests = args.tests or [str(TOP / "tools" / "kvm" / "tests")]
    env = {"LKVM_TESTHOST_CPUS": str(args.cpus)} if args.cpus else {}
    if args.cpus:
        print(f"e2e soak: the default test host with {args.cpus} CPUs", flush=True)
    if args.qemu:
        env["LKVM_TESTHOST_QEMU"] = args.qemu
        print(f"e2e soak: the default test host in QEMU from {args.qemu}", flush=True)
    for n in range(1, args.runs + 1):
        with tempfile.NamedTemporaryFile(prefix="lkvm-soak-", suffix=".log") as log:
            start = time.monotonic()
            done = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-rs", "-m", "e2e", *tests],
                env=os.environ | env | {"LKVM_TESTHOST_LOG": log.name}, check=False,
                capture_output=True, text=True, cwd=TOP)
            with open(log.name) as f:
                deaths = [json.loads(line) for line in f]
        verdict = "pass" if done.returncode == 0 else "fail"
        runs[verdict] += 1
        hangs += len(deaths)
        last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
        print(f"run {n}/{args.runs}: {verdict} in {time.monotonic() - start:.0f} s, "
              f"L1 deaths {len(deaths)}: {last}", flush=True)
        for death in deaths:
            # Which test L1 died under, and why: with -v, L1's console tail.
            why = death["why"] if args.verbose else death["why"].splitlines()[0]
            print(f"  L1 died under {death['job']}: {why}", flush=True)
        if verdict == "fail" and args.verbose:
            print(done.stdout[-6000:], flush=True)
    print(f"e2e soak: {args.runs} runs, {runs['pass']} passed, {runs['fail']} failed, "
          f"{hangs} hangs (L1 died under a job, which was rerun)", flush=True)
    return 0 if runs["fail"] == 0 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    arch = argparse.ArgumentParser(add_help=False)
    arch.add_argument("--arch", choices=sorted(HOSTS), default=DEFAULT,
                      help=f"the L1 test host's architecture (default {DEFAULT})")
    # As for the e2e tier's host: LKVM_TESTHOST_QEMU picks L1's QEMU for
    # `make run` too.
    qemu_option = dict(choices=sorted(qemu.SOURCES), default=os.environ.get("LKVM_TESTHOST_QEMU"),
                       help="the Debian suite of L1's QEMU (default: $LKVM_TESTHOST_QEMU, "
                            "else the host's own)")
    prepare = sub.add_parser("prepare", help="fill the cache", parents=[arch])
    prepare.set_defaults(func=cmd_prepare)
    sub.add_parser("needed", help="probe /dev/kvm").set_defaults(func=cmd_needed)
    run = sub.add_parser("run", help="run a command in L1", parents=[arch])
    run.add_argument("-t", "--timeout", type=float, default=600.0)
    run.add_argument("-c", "--cpus", type=int, help="L1's CPUs (default: 2)")
    run.add_argument("-m", "--mem", help="L1's memory (default: 4G on amd64, 2G on arm64)")
    run.add_argument("--qemu", **qemu_option)
    run.add_argument("cmd", nargs=argparse.REMAINDER)
    run.set_defaults(func=cmd_run)
    console = sub.add_parser("console", help="run a command in L1 on this terminal")
    console.add_argument("-t", "--timeout", type=float, default=24 * 3600.0)
    console.add_argument("-c", "--cpus", type=int, help="L1's CPUs (default: 2)")
    console.add_argument("-m", "--mem", default="4G")
    console.add_argument("--qemu", **qemu_option)
    console.add_argument("cmd", nargs=argparse.REMAINDER)
    console.set_defaults(func=cmd_console)
    kernel = sub.add_parser("guest-kernel", help="print the L2 kernel's path")
    kernel.set_defaults(func=cmd_guest_kernel)
    initrd = sub.add_parser("initrd", help="build an L2 initramfs")
    initrd.add_argument("script", help="shell script the guest runs")
    initrd.set_defaults(func=cmd_initrd)
    soak = sub.add_parser("soak", help="L1 sessions of 2-vCPU Linux boots")
    soak.add_argument("-n", "--sessions", type=int, default=20)
    soak.add_argument("-b", "--boots", type=int, default=2, help="boots per session")
    soak.add_argument("-c", "--cpus", type=int, help="L1's CPUs (default: the host's own)")
    soak.add_argument("-m", "--mem", default=testhost.HostConfig.mem)
    soak.add_argument("--tcg-thread", choices=["multi", "single"],
                      default=testhost.HostConfig.tcg_thread)
    soak.add_argument("--kvm-amd", default=testhost.HostConfig.kvm_amd,
                      help="kvm_amd's parameters in L1")
    soak.add_argument("--l1-kernel", choices=sorted(l1.KERNELS),
                      default=testhost.HostConfig.kernel)
    soak.add_argument("--qemu", choices=sorted(qemu.SOURCES),
                      help="the Debian suite of L1's QEMU (default: the host's own choice)")
    soak.add_argument("-p", "--params", default="",
                      help="more kernel parameters for the guests, to test what they change")
    soak.add_argument("-v", "--verbose", action="store_true")
    soak.set_defaults(func=cmd_soak)
    soak_e2e = sub.add_parser("soak-e2e", help="the e2e tier N times")
    soak_e2e.add_argument("-n", "--runs", type=int, default=20)
    soak_e2e.add_argument("-c", "--cpus", type=int,
                          help="the default test host's CPUs (default: its own)")
    soak_e2e.add_argument("--qemu", choices=sorted(qemu.SOURCES),
                          help="the Debian suite of the default test host's QEMU")
    soak_e2e.add_argument("-v", "--verbose", action="store_true")
    soak_e2e.add_argument("tests", nargs="*", help="test files or ids (default: all)")
    soak_e2e.set_defaults(func=cmd_soak_e2e)
    args = parser.parse_args()
    try:
        return args.func(args)
    except testhost.TestHostError as e:
        sys.exit(f"testhost: {e}")


if __name__ == "__main__":
    sys.exit(main())
