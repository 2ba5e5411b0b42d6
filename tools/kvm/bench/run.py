"""make bench: every benchmark in this directory, one after another."""

import importlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Each module's main() prints its own lines, with ratios against its baseline.
BENCHES = ("pio",)


def main() -> None:
    for name in BENCHES:
        print(f"== {name}")
        importlib.import_module(f"bench.{name}").main()


if __name__ == "__main__":
    main()
