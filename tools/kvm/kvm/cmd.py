"""What every builtin command shares: option parsing that fails in one
line, and help text read from Documentation/."""

import argparse
import importlib.util
import math
import os
import sys
from types import ModuleType

from kvm.errors import LkvmError, UsageError

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
DOC_DIR = os.path.join(TOP, "Documentation")
KVMDIR = os.path.join(TOP, "tools", "kvm")


def load_builtin(name: str) -> ModuleType:
    """builtin-<name>.py, loaded by path: the hyphen is the kernel's
    spelling.  Loaded once, so a command may build on another's."""
    key = f"builtin_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            key, os.path.join(KVMDIR, f"builtin-{name}.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[key] = module
    return sys.modules[key]


def doc_path(cmd: str) -> str:
    return os.path.join(DOC_DIR, f"lkvm-{cmd}.txt")


def show_doc(cmd: str) -> int:
    """Print Documentation/lkvm-CMD.txt, as `lkvm help CMD` does."""
    try:
        with open(doc_path(cmd)) as f:
            sys.stdout.write(f.read())
    except FileNotFoundError:
        raise LkvmError(f"no help for '{cmd}'") from None
    return 0


class HelpRequested(Exception):
    pass


class Parser(argparse.ArgumentParser):
    """argparse, but errors are one line and --help shows the document."""

    def __init__(self, cmd: str, **kw: object) -> None:
        super().__init__(prog=f"lkvm {cmd}", add_help=False, allow_abbrev=False, **kw)
        self.cmd = cmd
        self.add_argument("-h", "--help", action="store_true", help=argparse.SUPPRESS)

    def error(self, message: str) -> None:
        raise UsageError(f"{message} (see 'lkvm help {self.cmd}')")

    def parse(self, argv: list[str]) -> argparse.Namespace:
        args = self.parse_args(argv)
        if args.help:
            raise HelpRequested(self.cmd)
        return args


def size_mib(text: str) -> int:
    """A memory size in MiB: a plain number is MiB (kvmtool's unit); a
    K, M, G or T suffix says otherwise.  A bad one is kvmtool's die(), not
    a usage error: LkvmError passes through argparse."""
    units = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = units.get(text[-1:])
    number = text[:-1] if scale is not None else text
    try:
        value = float(number) * (scale or 1)
    except ValueError:
        raise LkvmError(f"'{text}' is not a memory size") from None
    # inf and nan are floats too; int() of them would raise.
    if not math.isfinite(value) or value != int(value) or value <= 0:
        raise LkvmError(f"'{text}' is not a whole, positive number of MiB")
    return int(value)
