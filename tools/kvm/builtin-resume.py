"""lkvm resume: let a paused guest's vCPUs run again."""

from ipc.client import Guest, for_each, instance_parser
from ipc.protocol import RESUME, VMSTATE_RUNNING


def resume(guest: Guest) -> None:
    if guest.vmstate() == VMSTATE_RUNNING:
        print(f"Guest {guest.name} is still running.")
        return
    guest.request(RESUME)
    print(f"Guest {guest.name} resumed")


def cmd_resume(argv: list[str]) -> int:
    return for_each(instance_parser("resume").parse(argv), resume)
