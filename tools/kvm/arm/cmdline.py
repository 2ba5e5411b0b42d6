"""The kernel command line lkvm gives an arm64 Linux guest; devices need
none of it (the device tree lists them), only the console and the root."""

from kvm.cmdline import assemble

# A panic resets the guest one second later (PSCI SYSTEM_RESET), which
# ends lkvm; earlycon takes the DT's stdout-path.
BASE = "panic=1 earlycon"
CONSOLES = {"serial": "console=ttyS0", "virtio": "console=hvc0"}


def kernel_cmdline(params: str, console: str, root: str | None = None) -> str:
    """root is the fragment for the root lkvm chose (a 9p root); a root=
    in the user's params wins over it."""
    return assemble(BASE, CONSOLES[console], params, root)
