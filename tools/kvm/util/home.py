"""~/.lkvm: where running guests' IPC sockets and `lkvm setup`'s rootfs
directories live, as in kvmtool."""

import os
import pwd

from kvm.errors import LkvmError

DIR_NAME = ".lkvm"


def home() -> str:
    """$HOME, or the passwd entry's home when HOME is unset (a service
    manager or `env -i` may start lkvm like that)."""
    path = os.environ.get("HOME")
    if path:
        return path
    try:
        return pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        raise LkvmError("HOME is not set and this user has no home directory: "
                        "set HOME") from None


def lkvm_dir(create: bool = False) -> str:
    """~/.lkvm; made private (0700) when `create` is set and it is missing."""
    path = os.path.join(home(), DIR_NAME)
    if create:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except OSError as e:
            raise LkvmError(f"cannot create {path}: {e.strerror} "
                            "(set HOME to a writable directory)") from None
        if not os.path.isdir(path):
            raise LkvmError(f"{path} is not a directory")
    return path
