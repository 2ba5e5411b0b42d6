"""lkvm list: running and paused guests, and the rootfs directories of
guests that are shut off, as kvmtool lists them."""

import os

from cli.cmd import Parser
from ipc.client import GuestGone, connect, guest_names
from ipc.protocol import VMSTATE_PAUSED
from kvm import msg
from kvm.errors import LkvmError
from util.home import lkvm_dir

RUNNING, PAUSED, SHUT_OFF = "running", "paused", "shut off"
UNKNOWN = "unknown"  # its socket is live but it did not answer


def parser() -> Parser:
    p = Parser("list")
    p.add_argument("-i", "--run", action="store_true", help="list running guests")
    p.add_argument("-r", "--rootfs", action="store_true", help="list rootfs directories")
    p.add_argument("--json", action="store_true", help="print a JSON array")
    return p


def running_guests() -> list[dict]:
    """Every guest with a live socket.  One that cannot answer now (out of
    fds, busy beyond the timeout) is still listed, in state unknown: a
    guest that runs must never vanish from the list."""
    rows = []
    for name in guest_names():
        try:
            with connect(name) as guest:
                pid, state = guest.pid(), guest.vmstate()
        except GuestGone:
            continue  # not running, or it ended while we asked
        except LkvmError as e:
            msg.warning(str(e))
            rows.append({"pid": None, "name": name, "state": UNKNOWN})
            continue
        rows.append({"pid": pid, "name": name,
                     "state": PAUSED if state == VMSTATE_PAUSED else RUNNING})
    return rows


def rootfs_dirs() -> list[dict]:
    try:
        entries = sorted(os.scandir(lkvm_dir()), key=lambda e: e.name)
    except FileNotFoundError:
        return []
    except OSError as e:
        raise LkvmError(f"cannot read {lkvm_dir()}: {e.strerror}") from None
    return [{"pid": None, "name": e.name, "state": SHUT_OFF}
            for e in entries if e.is_dir(follow_symlinks=False)]


def cmd_list(argv: list[str]) -> int:
    args = parser().parse(argv)
    if not args.run and not args.rootfs:
        args.run = args.rootfs = True
    rows = (running_guests() if args.run else []) + (rootfs_dirs() if args.rootfs else [])
    if args.json:
        import json  # only --json's output needs it
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'PID':>6} {'NAME':<20} STATE")
    print("-" * 36)
    for row in rows:
        print(f"{row['pid'] or '':>6} {row['name']:<20} {row['state']}")
    return 0
