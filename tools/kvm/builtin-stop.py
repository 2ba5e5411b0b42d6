"""lkvm stop: end a guest, as if it had rebooted; the command returns
once the guest has let go of its socket."""

from ipc.client import Guest, for_each, instance_parser
from ipc.protocol import STOP


def stop(guest: Guest) -> None:
    guest.request(STOP)
    guest.wait_closed()


def cmd_stop(argv: list[str]) -> int:
    return for_each(instance_parser("stop").parse(argv), stop)
