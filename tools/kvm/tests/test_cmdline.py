"""The kernel command line lkvm builds, before the user's -p."""

from x86.cmdline import kernel_cmdline


def test_acpi_on_only_drops_noacpi():
    # PCI is still probed through 0xcf8 (pci=conf1): the DSDT's host
    # bridge names the bus, configuration space describes the devices.
    without = kernel_cmdline("", "serial", False).split()
    with_acpi = kernel_cmdline("", "serial", True).split()
    assert "noacpi" in without and "pci=conf1,noearly" in with_acpi
    assert with_acpi == [w for w in without if w != "noacpi"]


def test_user_root_replaces_the_default_and_params_come_last():
    line = kernel_cmdline("root=/dev/vdb quiet", "virtio", True)
    assert "root=/dev/vda" not in line
    assert line.endswith("console=hvc0 root=/dev/vdb quiet")


def test_no_early_pci_scan():
    """Linux's early scans of configuration space (on an AMD family 0Fh
    CPU: every slot of 256 buses, twice, for an AGP bridge) cost an exit
    per port access and find nothing lkvm models."""
    pci = [w for w in kernel_cmdline("", "serial", True).split() if w.startswith("pci=")]
    assert pci and "noearly" in pci[-1].removeprefix("pci=").split(",")
