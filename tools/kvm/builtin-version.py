"""lkvm version: print lkvm's version in kvmtool's form ("kvm tool
VERSION", builtin-version.c), which scripts written for kvmtool read."""

from cli.cmd import Parser
from kvm.version import VERSION


def cmd_version(argv: list[str]) -> int:
    Parser("version").parse(argv)
    print(f"kvm tool {VERSION}")
    return 0
