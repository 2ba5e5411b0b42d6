"""The kernel command line lkvm builds, before the user's -p."""

import pytest

from x86.cmdline import kernel_cmdline


@pytest.mark.parametrize("acpi, pci", [(False, "noacpi pci=conf1"),
                                       (True, "pci=conf1,noacpi")])
def test_pci_is_probed_by_config_space_with_or_without_acpi(acpi, pci):
    # lkvm's DSDT has no PCI host bridge: with ACPI on, Linux must still
    # find the devices through 0xcf8 and not ask ACPI for their IRQs.
    line = kernel_cmdline("", "serial", acpi).split()
    assert " ".join(line[1:1 + len(pci.split())]) == pci
    assert line.count("noacpi") == (0 if acpi else 1)


def test_user_root_replaces_the_default_and_params_come_last():
    line = kernel_cmdline("root=/dev/vdb quiet", "virtio", True)
    assert "root=/dev/vda" not in line
    assert line.endswith("console=hvc0 root=/dev/vdb quiet")
