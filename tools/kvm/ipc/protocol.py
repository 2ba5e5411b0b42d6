"""The IPC protocol of a running guest: what its socket's server and its
clients (`lkvm list`, `pause`, `stop`, `debug` ...) share, and what
devices register their messages against.

One AF_UNIX stream socket per guest, ~/.lkvm/<name>.sock.  Requests are
kvmtool's: u32 type, u32 length, payload, in host (little-endian) order.
Every request gets a framed reply, u32 status (0 or an errno value), u32
length, payload (the answer, or a one-line message when status is not
0): a client learns that a pause took effect, or why a request failed.
Documentation/lkvm-ipc.txt has the details.
"""

import os
import socket
import struct
from collections.abc import Callable

from kvm.errors import LkvmError
from util.home import lkvm_dir

# Message types, kvmtool's numbers (include/kvm/kvm-ipc.h).
BALLOON, DEBUG, STAT, PAUSE, RESUME, STOP, PID, VMSTATE = range(1, 9)
TRANSLATE = 9  # lkvm's own: u32 cpu, u32 padding, u64 guest virtual address
TRANSLATE_PARAMS = struct.Struct("<I4xQ")
VMSTATE_RUNNING, VMSTATE_PAUSED = 0, 1

HEADER = struct.Struct("<II")  # requests: type, length; replies: status, length
U32 = struct.Struct("<I")
S32 = struct.Struct("<i")
# kvmtool's struct debug_cmd_params: u32 dbg_type, u32 cpu, char sysrq,
# padded to 12 bytes.
DEBUG_PARAMS = struct.Struct("<IIc3x")
DEBUG_DUMP, DEBUG_NMI, DEBUG_SYSRQ = 1 << 0, 1 << 1, 1 << 2

MAX_PAYLOAD = 4096  # far above any request; a bigger length is garbage
SOCK_SUFFIX = ".sock"
SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux


class IpcError(Exception):
    """A request the guest cannot carry out: sent back as status `errno`
    with the message."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(message)
        self.errno = err


# What serves one message type: takes the request's payload, returns the
# reply's, or raises IpcError.
Handler = Callable[[bytes], bytes]


def socket_path(name: str, create_dir: bool = False) -> str:
    if not name or "/" in name or name.startswith(".") or "\0" in name:
        raise LkvmError(f"'{name}' is not a usable guest name")
    path = os.path.join(lkvm_dir(create_dir), name + SOCK_SUFFIX)
    if len(os.fsencode(path)) > SUN_PATH_MAX:
        raise LkvmError(f"socket path {path} is longer than a unix socket allows "
                        f"({SUN_PATH_MAX} bytes): use a shorter name or HOME")
    return path


def is_live(path: str) -> bool:
    """Does a guest answer on this socket?  Refused means a dead guest's
    leftover."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as s:
        try:
            s.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            return False
    return True
