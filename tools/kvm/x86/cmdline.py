"""The kernel command line lkvm gives a Linux guest, built as kvmtool
builds it (x86/kvm.c and builtin-run.c) so guests see the same thing."""

# What every x86 guest gets: the legacy devices as lkvm models them.
BASE = ("noapic noacpi pci=conf1 reboot=k panic=1 i8042.direct=1 i8042.dumbkbd=1 "
        "i8042.nopnp=1 earlyprintk=serial i8042.noaux=1")
# The one place that maps --console to the guest's console device.
CONSOLES = {"serial": "console=ttyS0", "virtio": "console=hvc0", "hv": "console=hvc0"}
# The root when lkvm boots none of its own: the first disk.
DEFAULT_ROOT = "root=/dev/vda rw"


def kernel_cmdline(params: str, console: str, acpi: bool, root: str | None = None) -> str:
    """root is the fragment for the root lkvm chose (a 9p root); a root=
    in the user's params wins over it."""
    base = BASE if not acpi else BASE.replace("noacpi ", "")
    parts = [base, CONSOLES[console]]
    if not any(p.startswith("root=") for p in params.split()):
        parts.append(root or DEFAULT_ROOT)
    if params:
        parts.append(params)
    return " ".join(parts)
