"""lkvm help [COMMAND]: the command list, or one command's document."""

from cli.cmd import show_doc
from cli.commands import usage


def cmd_help(argv: list[str]) -> int:
    if not argv:
        print(usage())
        return 0
    return show_doc(argv[0])
