"""lkvm setup NAME: make a rootfs under ~/.lkvm for 'lkvm run -d NAME'."""

from cli.cmd import Parser
from rootfs import tree


def cmd_setup(argv: list[str]) -> int:
    p = Parser("setup")
    p.add_argument("name", help="name of the new rootfs")
    args = p.parse(argv)
    tree.create(args.name)
    print(f"  Info: Your new rootfs named {args.name} has been created.\n"
          f"You can now start it by running the following command:\n\n"
          f"  lkvm run -d {args.name}")
    return 0
