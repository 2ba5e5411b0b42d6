"""lkvm debug: a running guest's vCPU registers, an NMI, or a SysRq on
its serial console."""

import os
import sys

from kvm.errors import LkvmError, UsageError
from kvm.ipc import DEBUG, DEBUG_DUMP, DEBUG_NMI, DEBUG_PARAMS, DEBUG_SYSRQ
from kvm.ipc_client import Guest, for_each, instance_parser


def parser() -> object:
    p = instance_parser("debug")
    p.add_argument("-d", "--dump", action="store_true", help="dump every vCPU's state")
    p.add_argument("-m", "--nmi", type=int, metavar="CPU", help="inject an NMI on vCPU CPU")
    p.add_argument("-s", "--sysrq", metavar="C", help="send Magic SysRq C on ttyS0")
    return p


def cmd_debug(argv: list[str]) -> int:
    args = parser().parse(argv)
    flags, cpu, key = 0, 0, b"\0"
    if args.dump:
        flags |= DEBUG_DUMP
    if args.nmi is not None:
        # The protocol carries the vCPU as a u32 (kvmtool's debug_cmd_params).
        if not 0 <= args.nmi < 1 << 32:
            raise LkvmError(f"--nmi {args.nmi}: not a vCPU number")
        flags, cpu = flags | DEBUG_NMI, args.nmi
    if args.sysrq is not None:
        # The bytes the user typed: an undecodable one is a surrogate here.
        key = os.fsencode(args.sysrq)
        if len(key) != 1:
            raise LkvmError(f"--sysrq '{args.sysrq}': give a one-byte character")
        flags |= DEBUG_SYSRQ
    if not flags:
        raise UsageError("nothing to do: give --dump, --nmi or --sysrq")
    payload = DEBUG_PARAMS.pack(flags, cpu, key)

    def debug(guest: Guest) -> None:
        sys.stdout.write(guest.request(DEBUG, payload).decode(errors="replace"))

    return for_each(args, debug)
