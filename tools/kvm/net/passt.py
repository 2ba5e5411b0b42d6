"""mode=user on passt: the user-mode network stack QEMU, podman and
libvirt use, run as a child on one end of a socketpair and spoken to in
QEMU's stream protocol.  No root needed; as root, passt drops to nobody.

passt answers ARP and DHCP for the guest's address and maps the gateway
address to the host's loopback, so the guest reaches a server on the
host's 127.0.0.1 at host_ip, as under kvmtool's user mode.  DNS queries
sent to host_ip are forwarded to the host's resolver.

Its death closes the socket: the device sees LinkDown, once, with the
signal that killed passt or its exit status and the last line it wrote
to stderr.  Closing the back end ends passt, and -1 makes passt end by
itself should lkvm die first.
"""

import ipaddress
import shutil
import socket
import subprocess
import tempfile

from kvm.errors import LkvmError
from net.defaults import GUEST_IP, HOST_IP, HOST_MAC, PREFIX_LEN
from net.mac import parse_mac
from net.stream import StreamBackend

EXIT_WAIT = 2   # seconds passt gets to end on SIGTERM before SIGKILL
LAST_WORDS = 4096  # bytes of passt's stderr read for its last line when it exits


ROUTES = "/proc/net/route"     # this network namespace's IPv4 routes


def has_default_route() -> bool:
    """Whether an IPv4 default route exists: a row of /proc/net/route whose
    destination and mask are both 0."""
    try:
        with open(ROUTES) as f:
            rows = [line.split() for line in f.read().splitlines()[1:]]
    except OSError:
        return True     # no way to tell: let passt decide
    return any(len(r) > 7 and r[1] == r[7] == "00000000" for r in rows)


def passt_argv(fd: int, guest_ip: str, host_ip: str, prefix_len: int, host_mac: str,
               offline: bool) -> list[str]:
    # passt takes its defaults from the interface of the default route and
    # will not start without one ("External interface not usable").  lkvm
    # sets every default itself, so on a host with no such route (one off
    # the network, the nested test host) lo will do: the guest still
    # reaches the host's loopback through host_ip.
    return ["passt",
            "-f",                       # foreground: lkvm supervises it
            "-q",                       # errors only
            "-1",                       # one client: quit when lkvm's end closes
            "-4",                       # IPv4, as kvmtool's user mode
            "-F", str(fd),
            "-a", guest_ip, "-n", str(prefix_len), "-g", host_ip,
            "-M", host_mac,             # the gateway's MAC, as the guest sees it
            "-D", host_ip, "--dns-forward", host_ip,
            *(["-i", "lo"] if offline else [])]


INSTALL = "install Debian's passt package (apt-get install passt, or run make)"


def available() -> bool:
    return shutil.which("passt") is not None


class Passt(StreamBackend):
    def __init__(self, guest_ip: str = GUEST_IP, host_ip: str = HOST_IP,
                 prefix_len: int = PREFIX_LEN, host_mac: str = HOST_MAC) -> None:
        if not available():
            raise LkvmError(f"mode=user needs passt: {INSTALL}")
        try:
            net = ipaddress.IPv4Network(f"{guest_ip}/{prefix_len}", strict=False)
            gateway = ipaddress.IPv4Address(host_ip)
            parse_mac(host_mac)
        except ValueError as e:
            raise LkvmError(f"mode=user: {e}") from None
        if gateway not in net:
            raise LkvmError(f"host_ip {host_ip} is not in the guest's network {net}")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # An unlinked file, not a pipe: nobody need drain it while passt runs.
        self.stderr = tempfile.TemporaryFile()
        try:
            self.proc = subprocess.Popen(
                passt_argv(theirs.fileno(), guest_ip, host_ip, prefix_len, host_mac,
                           offline=not has_default_route()),
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=self.stderr,
                start_new_session=True)  # the terminal's ^C is lkvm's to handle
        except OSError as e:
            ours.close()
            self.stderr.close()
            raise LkvmError(f"cannot start passt: {e.strerror or e}") from None
        finally:
            theirs.close()
        super().__init__(ours)

    def why(self, what: str) -> str:
        try:
            status = self.proc.wait(EXIT_WAIT)
        except subprocess.TimeoutExpired:
            return f"passt: {what}"
        if status < 0:
            # Whatever it said before is startup chatter, not the cause.
            return f"passt killed by signal {-status}"
        self.stderr.seek(0)
        said = [line for line in self.stderr.read()[-LAST_WORDS:].decode(errors="replace")
                .splitlines() if line.strip() and "syslog" not in line]
        return f"passt exited with status {status}" + (f": {said[-1].strip()}" if said else "")

    def close(self) -> None:
        super().close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(EXIT_WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()
