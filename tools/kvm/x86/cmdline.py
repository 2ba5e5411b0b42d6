"""The kernel command line lkvm gives a Linux guest, built as kvmtool
builds it (x86/kvm.c and builtin-run.c) so guests see the same thing."""

from kvm.cmdline import assemble

# What every x86 guest gets: the legacy devices as lkvm models them.
# kvmtool's line, and pci=noearly: before its PCI core, Linux on an AMD
# family 0Fh-15h CPU (QEMU's qemu64 and TCG "max" models are family 0Fh,
# so the nested test host's guests see one) searches every slot of all
# 256 buses for an AGP bridge, twice (arch/x86/kernel/aperture_64.c):
# 32,768 configuration-port exits for a GART lkvm does not have.  The
# other early users of configuration space look for chipsets lkvm does
# not model either.
BASE = ("noapic noacpi pci=conf1,noearly reboot=k panic=1 i8042.direct=1 i8042.dumbkbd=1 "
        "i8042.nopnp=1 earlyprintk=serial i8042.noaux=1")
# The one place that maps --console to the guest's console device.
CONSOLES = {"serial": "console=ttyS0", "virtio": "console=hvc0", "hv": "console=hvc0"}


def kernel_cmdline(params: str, console: str, acpi: bool, root: str | None = None) -> str:
    """root is the fragment for the root lkvm chose (a 9p root); a root=
    in the user's params wins over it."""
    base = BASE if not acpi else BASE.replace("noacpi ", "")
    return assemble(base, CONSOLES[console], params, root)
