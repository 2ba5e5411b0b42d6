"""lkvm version: print lkvm's version."""

from kvm.cmd import Parser
from kvm.version import VERSION


def cmd_version(argv: list[str]) -> int:
    Parser("version").parse(argv)
    print(f"lkvm version {VERSION}")
    return 0
