"""mode=tap: a tap device from /dev/net/tun, as kvmtool sets one up.

The tap is one the kernel makes for lkvm (tap0, tap1 ...), an existing
one named with tapif=, or one whose fd lkvm inherited (fd=).  Its host
side is set up by script= when given (run with the tap's name, as
kvmtool runs it), else, for a tap lkvm made, by lkvm itself through
netlink: host_ip/24 and the link up.  At exit downscript= runs with
the name, then the tap made for lkvm goes, its address with it, when
its fd is closed.  An existing tap's set-up is its owner's: lkvm leaves
it alone.

Frames are plain Ethernet (IFF_NO_PI, no vnet header): the device
offers no offloads yet.  The tap is non-blocking; a frame the kernel
cannot take now is dropped, as on a wire.
"""

import errno
import fcntl
import os
import struct
import subprocess

from include.uapi import lib
from kvm import msg
from kvm.config import Nic
from kvm.errors import LkvmError
from net.backend import MAX_FRAME, LinkDown
from net.defaults import PREFIX_LEN

TUN = "/dev/net/tun"
VHOST_NET = "/dev/vhost-net"
# struct ifreq as TUNSETIFF and TUNGETIFF use it: the name (IFNAMSIZ),
# then the flags in its union; 40 bytes in all.
IFREQ = struct.Struct("16sH22x")
FLAGS = lib.IFF_TAP | lib.IFF_NO_PI
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
    if not nic.vhost:
        return
    if not os.path.exists(VHOST_NET):
        raise LkvmError(f"vhost=1 needs {VHOST_NET}, which this host does not have "
                        "(modprobe vhost_net); leave vhost= out to use lkvm's own queues")
    raise LkvmError("vhost=1: lkvm does not hand queues to vhost-net yet; leave vhost= out")


def attach(nic: Nic) -> tuple[int, str]:
    """The tap's fd and name: the inherited fd, or /dev/net/tun attached
    to tapif= or to a new tap."""
    if nic.fd is not None:
        try:
            name, flags = IFREQ.unpack(fcntl.ioctl(nic.fd, lib.TUNGETIFF, bytes(IFREQ.size)))
        except OSError as e:
            raise LkvmError(f"fd={nic.fd} is no tap: {e.strerror}") from None
        if flags & (lib.IFF_TAP | lib.IFF_NO_PI | lib.IFF_VNET_HDR) != FLAGS:
            raise LkvmError(f"fd={nic.fd}: lkvm takes a tap with IFF_NO_PI and no vnet header")
        return nic.fd, name.rstrip(b"\0").decode()
    try:
        fd = os.open(TUN, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        raise LkvmError(f"mode=tap: cannot open {TUN}: {e.strerror}") from None
    try:
        ifr = fcntl.ioctl(fd, lib.TUNSETIFF, IFREQ.pack((nic.tapif or "").encode(), FLAGS))
    except OSError as e:
        os.close(fd)
        hint = " (are you root?)" if e.errno == errno.EPERM else ""
        raise LkvmError(f"mode=tap: cannot attach to tap {nic.tapif or '(new)'}: "
                        f"{e.strerror}{hint}") from None
    return fd, IFREQ.unpack(ifr)[0].rstrip(b"\0").decode()


class Tap:
    def __init__(self, nic: Nic) -> None:
        check_vhost(nic)
        self.fd, self.ifname = attach(nic)
        self.downscript = nic.downscript
        try:
            os.set_blocking(self.fd, False)
            if nic.script:
                run_script(nic.script, self.ifname, "script=")
            elif nic.tapif is None and nic.fd is None:
                configure_host(self.ifname, nic.host_ip)
        except BaseException:
            self.close()
            raise

    def fileno(self) -> int:
        return self.fd

    def send(self, frame: bytes) -> None:
        try:
            os.write(self.fd, frame)
        except (BlockingIOError, InterruptedError):
            pass                # the tap's queue is full: dropped, as on a wire
        except OSError as e:
            if e.errno != errno.EIO:    # EIO: the link is down on the host side
                raise LinkDown(f"tap {self.ifname}: {e.strerror}") from None

    def recv(self) -> list[bytes]:
        frames = []
        while len(frames) < RECV_FRAMES:
            try:
                frame = os.read(self.fd, MAX_FRAME)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                raise LinkDown(f"tap {self.ifname}: {e.strerror}") from None
            if not frame:
                raise LinkDown(f"tap {self.ifname} is gone")
            frames.append(frame)
        return frames

    def close(self) -> None:
        """downscript=, with the tap still there for it to see, then the
        tap's fd.  A failing script is told, not raised: the other
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
