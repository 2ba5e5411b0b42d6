#!/usr/bin/env python3
"""How long a pause takes to take effect, and whether many guests leak.

    ipc.py [-n PAUSES] [-c CPUS] [-g GUESTS]

Starts the counting guest (every vCPU busy, exiting to lkvm on each
count) and times PAUSE requests from the client's send to the reply,
which comes once every vCPU is parked; prints the median and spread.
Then starts GUESTS idle guests, lists and stops them all, and prints
this process's open fds before and after and what is left in ~/.lkvm.
HOME is a temporary directory throughout.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

KVMDIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, KVMDIR)

from ipc.client import connect  # noqa: E402
from ipc.protocol import PAUSE, RESUME  # noqa: E402

LKVM = os.path.join(os.path.dirname(os.path.dirname(KVMDIR)), "lkvm")
GUESTS = os.path.join(KVMDIR, "tests", "guests")


def start(name: str, image: str, cpus: int) -> subprocess.Popen:
    p = subprocess.Popen([LKVM, "run", "-c", str(cpus), "-m", "16", "--name", name,
                          os.path.join(GUESTS, f"{image}.bin")],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    while b"# lkvm run" not in p.stderr.readline():
        if p.poll() is not None:
            sys.exit(f"lkvm run {name} failed")
    return p


def pause_latency(n: int, cpus: int) -> None:
    p = start("bench", "counter", cpus)
    with connect("bench") as g:
        times = []
        for _ in range(n):
            t = time.perf_counter()
            g.request(PAUSE)
            times.append(time.perf_counter() - t)
            g.request(RESUME)
            # Let the vCPUs get back into KVM_RUN: a pause right after a
            # resume finds them still parked and costs nothing.
            time.sleep(0.01)
    subprocess.run([LKVM, "stop", "-n", "bench"], check=True)
    p.wait()
    p.stderr.close()
    ms = sorted(t * 1000 for t in times)
    print(f"pause, {cpus} busy vCPU(s), {n} requests: median {statistics.median(ms):.3f} ms, "
          f"min {ms[0]:.3f}, p90 {ms[int(n * 0.9)]:.3f}, max {ms[-1]:.3f}")


def many_guests(count: int) -> None:
    before = len(os.listdir("/proc/self/fd"))
    guests = [start(f"g{i:02}", "idle", 1) for i in range(count)]
    listed = subprocess.run([LKVM, "list", "-i"], capture_output=True, check=True)
    running = listed.stdout.count(b" running")
    subprocess.run([LKVM, "stop", "-a"], check=True)
    statuses = [p.wait() for p in guests]
    for p in guests:
        p.stderr.close()
    after = len(os.listdir("/proc/self/fd"))
    left = os.listdir(os.path.join(os.environ["HOME"], ".lkvm"))
    print(f"{count} guests: {running} listed running, exit statuses {set(statuses)}, "
          f"fds before {before} after {after}, left in ~/.lkvm: {left}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=100, help="pause requests to time")
    ap.add_argument("-c", type=int, default=1, help="vCPUs of the counting guest")
    ap.add_argument("-g", type=int, default=16, help="idle guests to start at once")
    args = ap.parse_args()
    home = tempfile.mkdtemp(prefix="lkvm-bench-")
    os.environ["HOME"] = home
    try:
        pause_latency(args.n, args.c)
        many_guests(args.g)
    finally:
        shutil.rmtree(home)


if __name__ == "__main__":
    main()
