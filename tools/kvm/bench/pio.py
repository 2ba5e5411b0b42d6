"""Port-I/O exits per second: lkvm against the C loop that does nothing
but re-enter KVM_RUN (bench/pio_loop.c), on the same flat guest.

Each VMM runs the guest with a small and a large exit count; the rate is
the difference in exits over the difference in wall time, so start-up
(Python's included) cancels out.
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time

KVMDIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOP = os.path.dirname(os.path.dirname(KVMDIR))
GUEST = os.path.join(KVMDIR, "tests", "guests", "pio_bench.bin")
C_LOOP = os.path.join(TOP, ".build", "bench", "pio_loop")
COUNT_OFFSET = 2  # where pio_bench.S keeps its exit count
SMALL, LARGE, ROUNDS = 10_000, 110_000, 3


def guest_with(count: int, directory: str) -> str:
    with open(GUEST, "rb") as f:
        image = bytearray(f.read())
    image[COUNT_OFFSET:COUNT_OFFSET + 4] = count.to_bytes(4, "little")
    path = os.path.join(directory, f"pio-{count}.bin")
    with open(path, "wb") as f:
        f.write(image)
    return path


def wall(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   stdin=subprocess.DEVNULL, timeout=600)
    return time.perf_counter() - t0


def rate(vmm: list[str], small: str, large: str) -> float:
    samples = [(LARGE - SMALL) / (wall([*vmm, large]) - wall([*vmm, small]))
               for _ in range(ROUNDS)]
    return statistics.median(samples)


def main() -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        small, large = guest_with(SMALL, tmp), guest_with(LARGE, tmp)
        lkvm = rate([os.path.join(TOP, "lkvm"), "run", "-c", "1", "-m", "16"], small, large)
        c_loop = rate([C_LOOP], small, large)
    print(f"pio exits/s: lkvm {lkvm:,.0f}  C loop {c_loop:,.0f}  "
          f"ratio {lkvm / c_loop:.2f} (goal 0.5 now, 0.9 later)")
    return {"lkvm": lkvm, "c_loop": c_loop}


if __name__ == "__main__":
    sys.exit(main() and 0)
