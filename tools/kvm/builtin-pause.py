"""lkvm pause: stop a guest's vCPUs; the command returns once all of them
are stopped."""

from ipc.client import Guest, for_each, instance_parser
from ipc.protocol import PAUSE, VMSTATE_PAUSED


def pause(guest: Guest) -> None:
    if guest.vmstate() == VMSTATE_PAUSED:
        print(f"Guest {guest.name} is already paused.")
        return
    guest.request(PAUSE)
    print(f"Guest {guest.name} paused")


def cmd_pause(argv: list[str]) -> int:
    return for_each(instance_parser("pause").parse(argv), pause)
