"""lkvm balloon: grow or shrink a guest's virtio balloon, in MiB."""

from cli.cmd import Parser
from ipc.client import connect
from ipc.protocol import BALLOON, S32
from kvm.errors import LkvmError, UsageError


def parser() -> Parser:
    p = Parser("balloon")
    p.add_argument("-n", "--name", help="the guest's name")
    p.add_argument("-i", "--inflate", type=int, metavar="MB", help="take MB from the guest")
    p.add_argument("-d", "--deflate", type=int, metavar="MB", help="give MB back to the guest")
    return p


def cmd_balloon(argv: list[str]) -> int:
    args = parser().parse(argv)
    if not args.name:
        raise UsageError("give the guest's name with -n NAME")
    if (args.inflate is None) == (args.deflate is None):
        raise UsageError("give either --inflate MB or --deflate MB")
    mib = args.inflate if args.inflate is not None else args.deflate
    if mib <= 0 or mib >= 1 << 31:
        raise LkvmError(f"{mib}: the size must be a positive number of MiB")
    with connect(args.name) as guest:
        guest.request(BALLOON, S32.pack(mib if args.inflate is not None else -mib))
    return 0
