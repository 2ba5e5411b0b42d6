"""A Linux guest on lkvm's virtio devices: it sees /dev/vda, /dev/vdb,
/dev/hvc0 and /dev/hwrng, writes and syncs to vda, writes to the
copy-on-write vdb (,snapshot), reads back; afterwards the host (where lkvm ran: L1 on
a nested-PVM machine) checks the image files.

Over PCI the guest is Debian's cloud kernel, its virtio drivers modules
the initramfs loads.  Over MMIO it is the kernel `make guest-kernel`
builds: x86 has no device tree, so the devices are named on the command
line, which needs CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES (the cloud kernel
has it off).
"""

import shlex
from pathlib import Path

import pytest

from tests.helpers import LKVM, TOP
from tests.testhost import guest_kernel, kvmconfig_kernel, make_initrd

pytestmark = pytest.mark.e2e

PAYLOAD = "lkvm-e2e-payload"
ORIGINAL = "original-vdb"

GUEST = f"""
for d in vda vdb hvc0 hwrng; do [ -e /dev/$d ] && echo "guest: have $d"; done
echo "guest: rng $(head -c 16 /dev/hwrng | od -An -tx1 | tr -d ' \\n')"
echo "guest: serial $(cat /sys/block/vda/serial)"
printf {PAYLOAD} | dd of=/dev/vda bs=512 seek=1 conv=sync,fsync 2>/dev/null
printf overwritten | dd of=/dev/vdb bs=512 conv=sync,fsync 2>/dev/null
sync
echo 3 > /proc/sys/vm/drop_caches
echo "guest: vda $(dd if=/dev/vda bs=512 skip=1 count=1 2>/dev/null | head -c 16)"
echo "guest: vdb $(dd if=/dev/vdb bs=512 count=1 2>/dev/null | head -c 11)"
echo "guest: hvc0 says hello" > /dev/hvc0
"""


def host_script(transport: str, kernel: Path, modules: bool) -> str:
    # The cloud kernel's virtio_console is a module, loaded by the initrd:
    # the initial console (the last console=) must be the built-in 8250.
    # hvc0 still gets the guest's line, and lkvm shows both.
    initrd = make_initrd(GUEST, modules=modules)
    run = [LKVM, "run", "-k", str(kernel), "-i", str(initrd),
           "-m", "256", "-c", "1", "--rng", "--console", "virtio",
           "--virtio-transport", transport, "-p", "console=ttyS0 quiet"]
    return f"""
d=$(mktemp -d)
truncate -s 8M $d/a.img
truncate -s 8M $d/b.img
printf {ORIGINAL} | dd of=$d/b.img conv=notrunc 2>/dev/null
{shlex.join(run)} -d "$d/a.img" -d "$d/b.img,snapshot"
echo "host: lkvm $?"
echo "host: a.img $(dd if=$d/a.img bs=512 skip=1 count=1 2>/dev/null | head -c 16)"
echo "host: b.img $(head -c 12 $d/b.img)"
rm -rf $d
"""


@pytest.mark.parametrize("transport", ["pci", "mmio"])
def test_linux_uses_virtio_blk_console_and_rng(l2host, transport):
    if transport == "pci":
        script = host_script(transport, guest_kernel(), modules=True)
    elif (kernel := kvmconfig_kernel()) is not None:
        script = host_script(transport, kernel, modules=False)
    else:
        pytest.skip("virtio-mmio needs the kernel of make guest-kernel")
    r = l2host.run(["sh", "-c", script], timeout=300, cwd=TOP)  # 90 s seen under load
    out = r.stdout
    for dev in ("vda", "vdb", "hvc0", "hwrng"):
        assert f"guest: have {dev}" in out, out + r.stderr
    rng = out.split("guest: rng ")[1].split()[0]
    assert len(rng) == 32 and rng != "0" * 32
    assert "guest: serial lkvm-disk-0" in out
    assert f"guest: vda {PAYLOAD}" in out
    assert "guest: vdb overwritten" in out        # the guest sees its own write...
    assert "guest: hvc0 says hello" in out
    assert "host: lkvm 0" in out
    assert f"host: a.img {PAYLOAD}" in out        # synced writes reached the file
    assert f"host: b.img {ORIGINAL}" in out       # ...which never reached the file
