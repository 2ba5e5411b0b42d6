"""lkvm: the kernel's KVM tool.  Finds the command in cli/commands.py and
runs its builtin-<name>.py."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cli.cmd import HelpRequested, load_builtin  # noqa: E402
from cli.commands import COMMANDS, usage  # noqa: E402
from kvm import msg  # noqa: E402
from kvm.errors import KVMTOOL_USAGE, LkvmError  # noqa: E402


def dispatch(argv: list[str]) -> int:
    if not argv or argv[0] in ("--help", "-h"):
        print(usage())
        return 0
    if argv[0] == "--version":
        argv = ["version"]
    name = argv[0]
    if name not in dict(COMMANDS):
        msg.error(f"'{name}' is not a lkvm command.")
        print(usage(), file=sys.stderr)
        return KVMTOOL_USAGE
    module = load_builtin(name)
    try:
        return getattr(module, f"cmd_{name}")(argv[1:])
    except HelpRequested as e:
        sys.stdout.write(str(e))
        return 0


def main() -> None:
    try:
        status = dispatch(sys.argv[1:])
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        status = 0
    except LkvmError as e:
        msg.report(e.prefix, str(e))
        status = e.status
    except KeyboardInterrupt:
        status = 130
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader left (lkvm help | head): not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(status)


if __name__ == "__main__":
    main()
