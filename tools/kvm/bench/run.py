#!/usr/bin/env python3
"""make bench: run every benchmark script in this directory in turn."""

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> int:
    status = 0
    for name in sorted(os.listdir(HERE)):
        if name.endswith(".py") and name != "run.py" and not name.startswith("_"):
            print(f"== {name}", flush=True)
            status |= subprocess.call([sys.executable, os.path.join(HERE, name)])
    return status


if __name__ == "__main__":
    sys.exit(main())
