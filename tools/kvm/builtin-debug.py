"""lkvm debug: a running guest's vCPU registers, an NMI, a SysRq on its
serial console, or a walk of its page tables."""

import os
import sys

from ipc.client import Guest, for_each, instance_parser
from ipc.protocol import (
    DEBUG,
    DEBUG_DUMP,
    DEBUG_NMI,
    DEBUG_PARAMS,
    DEBUG_SYSRQ,
    TRANSLATE,
    TRANSLATE_PARAMS,
)
from kvm.errors import LkvmError, UsageError


def parser() -> object:
    p = instance_parser("debug")
    p.add_argument("-d", "--dump", action="store_true", help="dump every vCPU's state")
    p.add_argument("-m", "--nmi", type=int, metavar="CPU", help="inject an NMI on vCPU CPU")
    p.add_argument("-s", "--sysrq", metavar="C", help="send Magic SysRq C on ttyS0")
    p.add_argument("--translate", metavar="ADDR",
                   help="walk vCPU --cpu's page tables for virtual address ADDR")
    p.add_argument("--cpu", type=int, default=0, help="the vCPU for --translate (default 0)")
    return p


def vcpu_number(option: str, value: int) -> int:
    # The protocol carries the vCPU as a u32 (kvmtool's debug_cmd_params).
    if not 0 <= value < 1 << 32:
        raise LkvmError(f"{option} {value}: not a vCPU number")
    return value


def address(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        value = -1
    if not 0 <= value < 1 << 64:
        raise LkvmError(f"--translate {text}: not a 64-bit address (e.g. 0xffffffff81000000)")
    return value


def cmd_debug(argv: list[str]) -> int:
    args = parser().parse(argv)
    flags, cpu, key = 0, 0, b"\0"
    if args.dump:
        flags |= DEBUG_DUMP
    if args.nmi is not None:
        flags, cpu = flags | DEBUG_NMI, vcpu_number("--nmi", args.nmi)
    if args.sysrq is not None:
        # The bytes the user typed: an undecodable one is a surrogate here.
        key = os.fsencode(args.sysrq)
        if len(key) != 1:
            raise LkvmError(f"--sysrq '{args.sysrq}': give a one-byte character")
        flags |= DEBUG_SYSRQ
    requests = []
    if flags:
        requests.append((DEBUG, DEBUG_PARAMS.pack(flags, cpu, key)))
    if args.translate is not None:
        requests.append((TRANSLATE, TRANSLATE_PARAMS.pack(vcpu_number("--cpu", args.cpu),
                                                          address(args.translate))))
    if not requests:
        raise UsageError("nothing to do: give --dump, --nmi, --sysrq or --translate")

    def debug(guest: Guest) -> None:
        for request, payload in requests:
            sys.stdout.write(guest.request(request, payload).decode(errors="replace"))

    return for_each(args, debug)
