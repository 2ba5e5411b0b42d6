"""The kernel command line lkvm gives a ppc64 Linux guest: the device tree
lists the devices, so only the console (the hypervisor console, hvc0,
whether asked for as serial or hv, or virtio's after it) and the root."""

from kvm.cmdline import assemble

# A panic reboots the guest a second later (RTAS system-reboot): lkvm ends.
BASE = "panic=1"
CONSOLES = {"serial": "console=hvc0", "hv": "console=hvc0", "virtio": "console=hvc1"}


def kernel_cmdline(params: str, console: str, root: str | None = None) -> str:
    return assemble(BASE, CONSOLES[console], params, root)
