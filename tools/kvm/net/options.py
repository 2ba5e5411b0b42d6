"""-n/--network as kvmtool reads it: comma-separated key=value settings,
one NIC per option, the option repeatable:

    mode=user|tap|none  guest_ip  host_ip  guest_mac  host_mac
    script  downscript  tapif  vhost=0|1  trans=pci|mmio  fd  mq=N

A -n without mode= is a tap, as in kvmtool; mode=none makes no NIC.
The n-th NIC's default guest MAC ends in 0x15 + n, so several NICs
differ without being told to.  Bad input ends lkvm as kvmtool's die()
does, with status 128.
"""

from collections.abc import Callable
from dataclasses import replace

from kvm import msg
from kvm.config import Nic
from kvm.errors import KVMTOOL_DIE, LkvmError
from net.mac import parse_mac

MODES = ("user", "tap", "none")
TRANSPORTS = ("pci", "mmio", "pci-legacy", "mmio-legacy")
TAP_ONLY = ("script", "downscript", "tapif", "vhost", "fd", "mq")
IFNAMSIZ = 16       # linux/if.h
MAX_QUEUES = 256    # a tap's most (the kernel's MAX_TAP_QUEUES)


class BadSetting(ValueError):
    pass


def ip(value: str) -> str:
    import ipaddress  # only for -n's addresses: a guest without -n needs none
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise BadSetting(f"{value} is not an IPv4 address") from None


def mac(value: str) -> str:
    try:
        parse_mac(value)
    except ValueError as e:
        raise BadSetting(str(e)) from None
    return value.lower()


def one_of(choices: tuple[str, ...]) -> Callable[[str], str]:
    def check(value: str) -> str:
        if value not in choices:
            raise BadSetting(f"{value} is not one of {', '.join(choices)}")
        return value
    return check


def number(value: str) -> int:
    if not value.isdecimal():
        raise BadSetting(f"{value} is not a number")
    return int(value)


def queues(value: str) -> int:
    n = number(value)
    if not 1 <= n <= MAX_QUEUES:
        raise BadSetting(f"{value} is not a queue count from 1 to {MAX_QUEUES}")
    return n


def flag(value: str) -> bool:
    if value not in ("0", "1"):
        raise BadSetting(f"{value} is not 0 or 1")
    return value == "1"


def ifname(value: str) -> str:
    """What the kernel's dev_valid_name() takes: at most IFNAMSIZ - 1
    bytes, no '/', ':' or space, not . or .. (so no macvtap path, which
    kvmtool took here)."""
    if not 0 < len(value.encode()) < IFNAMSIZ or value in (".", "..") or \
            any(c in value for c in "/: ") or not value.isprintable():
        raise BadSetting(f"{value} is not an interface name")
    return value


def path(value: str) -> str:
    if not value:
        raise BadSetting("an empty path")
    return value


# Each setting's reader; its value lands in the Nic field of its name.
SETTINGS: dict[str, Callable[[str], object]] = {
    "mode": one_of(MODES), "guest_ip": ip, "host_ip": ip, "guest_mac": mac, "host_mac": mac,
    "script": path, "downscript": path, "tapif": ifname, "vhost": flag,
    "trans": one_of(TRANSPORTS), "fd": number, "mq": queues,
}


def fail(spec: str, why: str) -> LkvmError:
    return LkvmError(f"--network {spec}: {why}", KVMTOOL_DIE)


def default_mac(index: int) -> str:
    base = parse_mac(Nic.guest_mac)
    return (base[:5] + bytes([(base[5] + index) & 0xFF])).hex(":")


def parse_nic(spec: str, index: int) -> Nic | None:
    """The NIC one -n SPEC asks for, the index-th made; None for mode=none."""
    values: dict[str, object] = {"mode": "tap", "guest_mac": default_mac(index)}
    for item in spec.split(","):
        key, sep, text = item.partition("=")
        if key not in SETTINGS:
            raise fail(spec, f"unknown network parameter '{key}'")
        if not sep:
            raise fail(spec, f"{key} needs a value ({key}=...)")
        if key == "mode" and text not in MODES:
            raise fail(spec, f"Unknown network mode {text}, please use user, tap or none")
        try:
            values[key] = SETTINGS[key](text)
        except BadSetting as e:
            raise fail(spec, f"{key}: {e}") from None
    if values["mode"] == "none":
        return None
    if values["mode"] == "user" and (tap := [k for k in TAP_ONLY if k in values]):
        raise fail(spec, f"{tap[0]}= is for mode=tap")
    if "fd" in values and "tapif" in values:
        raise fail(spec, "give the tap either as fd= or as tapif=, not both")
    if "fd" in values and values.get("mq", 1) > 1:
        raise fail(spec, "mq= opens queues of its own: not with fd=")
    return replace(Nic(), **values)


def parse_networks(specs: list[str]) -> tuple[Nic, ...]:
    """The NICs the -n options ask for."""
    nics: list[Nic] = []
    for spec in specs:
        if (nic := parse_nic(spec, len(nics))) is not None:
            nics.append(nic)
    seen: set[str] = set()
    for nic in nics:
        if nic.guest_mac in seen:
            raise LkvmError(f"--network: two NICs have the guest MAC {nic.guest_mac}",
                            KVMTOOL_DIE)
        seen.add(nic.guest_mac)
    return tuple(nics)


def default_nics(linux: bool) -> tuple[Nic, ...]:
    """kvmtool's one user-mode NIC, for a Linux guest only (a flat binary
    has no driver for it).  Where passt is missing the guest goes without
    a network, and is told why: asked for with -n, mode=user fails."""
    if not linux:
        return ()
    from net import passt  # its subprocess and tempfile: a flat guest needs none
    if not passt.available():
        msg.warning(f"no passt for the default network, so the guest has none: {passt.INSTALL}")
        return ()
    return (Nic(),)
