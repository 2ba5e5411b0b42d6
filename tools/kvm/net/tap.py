"""mode=tap: a tap device from /dev/net/tun, as kvmtool sets one up.

The tap is one the kernel makes for lkvm (tap0, tap1 ...), an existing
one named with tapif=, or one whose fd lkvm inherited (fd=).  Its host
side is set up by script= when given (run with the tap's name, as
kvmtool runs it), else, for a tap lkvm made, by lkvm itself through
netlink: host_ip/24 and the link up.  At exit downscript= runs with
the name, then the tap made for lkvm goes, its address with it, when
its fd is closed.  An existing tap's set-up is its owner's: lkvm leaves
it alone.

Each frame comes with a virtio_net_hdr (IFF_VNET_HDR, its ten bytes as
TUNSETVNETHDRSZ says), so the guest's partial checksums and whole TCP
segments pass to the host's stack as they are, and the host's reach the
guest as the offloads it took allow (TUNSETOFFLOAD).  An inherited tap
without a vnet header carries plain frames and gets no offloads.

mq=N opens N queues of one tap (IFF_MULTI_QUEUE), one per queue pair;
those past the pairs the guest uses are detached (TUNSETQUEUE), so the
kernel spreads flows over the rest only.

The queues are non-blocking; a frame the kernel cannot take now, or
whose header it refuses, is dropped, as on a wire.
"""

import errno
import fcntl
import os
import struct
import subprocess

from include.uapi import ffi, lib
from kvm import msg
from kvm.config import Nic
from kvm.errors import LkvmError
from net import vhost
from net.backend import MAX_FRAME, LinkDown
from net.defaults import PREFIX_LEN
from net.features import GUEST_OFFLOADS, HOST_OFFLOADS, bit

TUN = "/dev/net/tun"
# struct ifreq as TUNSETIFF and TUNGETIFF use it: the name (IFNAMSIZ),
# then the flags in its union; 40 bytes in all.
IFREQ = struct.Struct("16sH22x")
FLAGS = lib.IFF_TAP | lib.IFF_NO_PI | lib.IFF_VNET_HDR
VNET_HDR = ffi.sizeof("struct virtio_net_hdr")     # each frame's, without num_buffers
INT = struct.Struct("i")
# The guest's receive offloads, as TUNSETOFFLOAD names them.
TUN_OFFLOADS = {bit("GUEST_CSUM"): lib.TUN_F_CSUM, bit("GUEST_TSO4"): lib.TUN_F_TSO4,
                bit("GUEST_TSO6"): lib.TUN_F_TSO6, bit("GUEST_ECN"): lib.TUN_F_TSO_ECN}
RECV_FRAMES = 64        # read at a time, so one busy tap cannot starve the thread
SCRIPT_TIMEOUT = 30     # seconds a script= or downscript= may take


def run_script(script: str, ifname: str, what: str) -> None:
    try:
        r = subprocess.run([script, ifname], stdin=subprocess.DEVNULL, timeout=SCRIPT_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise LkvmError(f"{what} {script} {ifname}: {getattr(e, 'strerror', None) or e}") \
            from None
    if r.returncode != 0:
        raise LkvmError(f"{what} {script} {ifname} failed with status {r.returncode}")


def configure_host(ifname: str, host_ip: str) -> None:
    """host_ip/24 on the tap and its link up, through netlink.  Nothing
    undoes it: the tap made for lkvm, and its address, go with its fd."""
    from pyroute2 import IPRoute  # only tap users pay for importing it
    with IPRoute() as ip:
        index = ip.link_lookup(ifname=ifname)[0]
        ip.addr("add", index=index, address=host_ip, prefixlen=PREFIX_LEN)
        ip.link("set", index=index, state="up")


def check_vhost(nic: Nic) -> None:
    if nic.vhost and not vhost.available():
        raise LkvmError(f"vhost=1 needs {vhost.VHOST_NET}, which this host does not have "
                        "(modprobe vhost_net); leave vhost= out to use lkvm's own queues")


def tun_ioctl(fd: int, request: int, arg: bytes | int, what: str) -> bytes | int:
    try:
        return fcntl.ioctl(fd, request, arg)
    except OSError as e:
        hint = " (are you root?)" if e.errno == errno.EPERM else ""
        raise LkvmError(f"mode=tap: {what}: {e.strerror}{hint}") from None


def inherited(fd: int) -> tuple[str, int]:
    """The name and flags of the tap behind fd=."""
    try:
        name, flags = IFREQ.unpack(fcntl.ioctl(fd, lib.TUNGETIFF, bytes(IFREQ.size)))
    except OSError as e:
        raise LkvmError(f"fd={fd} is no tap: {e.strerror}") from None
    if flags & (lib.IFF_TAP | lib.IFF_NO_PI) != lib.IFF_TAP | lib.IFF_NO_PI:
        raise LkvmError(f"fd={fd}: lkvm takes a tap with IFF_NO_PI")
    return name.rstrip(b"\0").decode(), flags


def open_queue(name: str, flags: int) -> tuple[int, str]:
    """A new fd on /dev/net/tun attached to tap `name` (a new one if
    empty), and the tap's name."""
    try:
        fd = os.open(TUN, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        raise LkvmError(f"mode=tap: cannot open {TUN}: {e.strerror}") from None
    try:
        ifr = tun_ioctl(fd, lib.TUNSETIFF, IFREQ.pack(name.encode(), flags),
                        f"cannot attach to tap {name or '(new)'}")
    except LkvmError:
        os.close(fd)
        raise
    return fd, IFREQ.unpack(ifr)[0].rstrip(b"\0").decode()


def attach(nic: Nic) -> tuple[list[int], str, int]:
    """The tap's queues' fds, its name and flags: the inherited fd, or
    /dev/net/tun attached mq times to tapif= or to a new tap."""
    if nic.fd is not None:
        return [nic.fd], *inherited(nic.fd)
    flags = FLAGS | (lib.IFF_MULTI_QUEUE if nic.mq > 1 else 0)
    fds: list[int] = []
    name = nic.tapif or ""
    try:
        while len(fds) < nic.mq:
            fd, name = open_queue(name, flags)
            fds.append(fd)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds, name, flags


def open_tap(nic: Nic) -> list["TapQueue"]:
    """One back end per queue of the tap the NIC names; the first runs
    the scripts and takes the host side's set-up."""
    check_vhost(nic)
    fds, ifname, flags = attach(nic)
    offloads = HOST_OFFLOADS | GUEST_OFFLOADS if flags & lib.IFF_VNET_HDR else 0
    if nic.vhost and not offloads:
        for fd in fds:
            os.close(fd)
        raise LkvmError(f"fd={nic.fd}: vhost=1 needs a tap with IFF_VNET_HDR")
    queues = [TapQueue(fd, ifname, offloads) for fd in fds]
    try:
        for q in queues:
            os.set_blocking(q.fd, False)
            if offloads:
                tun_ioctl(q.fd, lib.TUNSETVNETHDRSZ, INT.pack(VNET_HDR), "vnet header")
        queues[0].downscript = nic.downscript
        if nic.script:
            run_script(nic.script, ifname, "script=")
        elif nic.tapif is None and nic.fd is None:
            configure_host(ifname, nic.host_ip)
    except BaseException:
        for q in queues:
            q.close()
        raise
    return queues


class TapQueue:
    def __init__(self, fd: int, ifname: str, offloads: int) -> None:
        self.fd, self.ifname, self.offloads = fd, ifname, offloads
        self.downscript: str | None = None
        self.frame_size = MAX_FRAME + (VNET_HDR if offloads else 0)

    def fileno(self) -> int:
        return self.fd

    def send(self, frame: bytes) -> None:
        try:
            os.write(self.fd, frame)
        except (BlockingIOError, InterruptedError):
            pass                # the tap's queue is full: dropped, as on a wire
        except OSError as e:
            # EIO: the link is down on the host side; EINVAL: a header
            # the kernel would not take (a segment size past the frame...).
            if e.errno not in (errno.EIO, errno.EINVAL):
                raise LinkDown(f"tap {self.ifname}: {e.strerror}") from None

    def recv(self) -> list[bytes]:
        frames = []
        while len(frames) < RECV_FRAMES:
            try:
                frame = os.read(self.fd, self.frame_size)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                raise LinkDown(f"tap {self.ifname}: {e.strerror}") from None
            if not frame:
                raise LinkDown(f"tap {self.ifname} is gone")
            frames.append(frame)
        return frames

    def set_header_size(self, size: int) -> None:
        """The vnet header each frame has: ours, or the driver's under vhost."""
        fcntl.ioctl(self.fd, lib.TUNSETVNETHDRSZ, INT.pack(size))

    def set_offloads(self, offloads: int) -> None:
        flags = sum(tun for feature, tun in TUN_OFFLOADS.items() if offloads & feature)
        try:
            fcntl.ioctl(self.fd, lib.TUNSETOFFLOAD, flags)
        except OSError as e:
            raise LinkDown(f"tap {self.ifname}: setting offloads: {e.strerror}") from None

    def enable(self, on: bool) -> None:
        flag = lib.IFF_ATTACH_QUEUE if on else lib.IFF_DETACH_QUEUE
        try:
            fcntl.ioctl(self.fd, lib.TUNSETQUEUE, IFREQ.pack(b"", flag))
        except OSError as e:
            if e.errno != errno.EINVAL:     # attached or detached already
                raise LinkDown(f"tap {self.ifname}: queue: {e.strerror}") from None

    def close(self) -> None:
        """downscript=, with the tap still there for it to see, then the
        queue's fd.  A failing script is told, not raised: the other
        devices still have to be closed."""
        if self.fd < 0:
            return
        if self.downscript:
            try:
                run_script(self.downscript, self.ifname, "downscript=")
            except LkvmError as e:
                msg.warning(str(e))
        os.close(self.fd)
        self.fd = -1
