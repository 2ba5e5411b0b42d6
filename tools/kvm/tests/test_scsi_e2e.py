"""A Linux guest on lkvm's virtio-scsi: one boot of the kernel `make
guest-kernel` builds (SCSI_VIRTIO and BLK_DEV_SD built in), in a rootfs
whose programs are the host's, with two LUNs; and one on a vhost-scsi
target (kvmtool's -d scsi:WWPN:TPGT) set up in the test host's configfs.

The guest finds sda and the read-only sdb as lkvm's target describes
them, makes an ext4 file system on sda with mkfs.ext4, writes a file and
8 MiB of random data, reads them back past its page cache, trims the free
space, and checks the file system with fsck; it cannot write to sdb.
Afterwards the host checks the image with e2fsck and reads the guest's
file out of it with debugfs."""

import shlex
from pathlib import Path

import pytest

from tests.helpers import LKVM, TOP

pytestmark = pytest.mark.e2e

# The whole test took 322 s once (L1's boot included) and ran past a
# 300 s bound on lkvm the next time, with other nested VMs on the machine.
TIMEOUT = 660
LKVM_TIMEOUT = 560      # lkvm's own bound, inside TIMEOUT: its output is then still shown
PAYLOAD = "lkvm-scsi-e2e-payload"
RO_MARK = "read-only-lun"

# What the guest does with sda, whoever's target it is.
GUEST_SDA = rf"""
mark() {{ read -r up _ < /proc/uptime; echo "guest: at $up s: $1"; }}
mark start
for d in sda sdb; do [ -b /dev/$d ] && echo "guest: have $d"; done
q=/sys/block/sda
echo "guest: sda" $(cat $q/device/vendor $q/device/model)    # padded: split
echo "guest: sda at $(basename $(readlink $q/device))"
echo "guest: sda rotational $(cat $q/queue/rotational) discard $(cat $q/queue/discard_max_bytes)"
echo "guest: sda cache $(cat $q/device/scsi_disk/*/cache_type)"
/sbin/mkfs.ext4 -q -F /dev/sda && echo "guest: mkfs ok"
mark mkfs
mkdir -p /tmp/scsi && mount -t ext4 /dev/sda /tmp/scsi && echo "guest: mounted"
echo {PAYLOAD} > /tmp/scsi/hello
dd if=/dev/urandom of=/tmp/scsi/big bs=1M count=8 2>/dev/null
before=$(md5sum < /tmp/scsi/big)
sync && echo 3 > /proc/sys/vm/drop_caches
mark written
after=$(md5sum < /tmp/scsi/big)
[ "$after" = "$before" ] && echo "guest: big read back" || echo "guest: big $before $after"
mark read
rm /tmp/scsi/big
if [ "$(cat $q/queue/discard_max_bytes)" != 0 ]; then
	fstrim /tmp/scsi && echo "guest: trimmed"
else
	echo "guest: trimmed (no discard)"
fi
umount /tmp/scsi
/sbin/fsck.ext4 -fn /dev/sda >/dev/null 2>&1; echo "guest: fsck $?"
mark fsck
"""
GUEST = GUEST_SDA + rf"""
echo "guest: sdb ro $(cat /sys/block/sdb/ro)"
dd if=/dev/zero of=/dev/sdb bs=512 count=1 2>/dev/null && echo "guest: sdb WRITTEN"
echo "guest: sdb says $(head -c {len(RO_MARK)} /dev/sdb)"
"""


def host_script(kernel: str) -> str:
    sandbox = [LKVM, "sandbox", "-k", kernel, "-m", "256", "-c", "1", "-p", "quiet"]
    return f"""
d=$(mktemp -d)
name=scsi-e2e-$$
truncate -s 64M $d/a.img
printf {RO_MARK} > $d/b.img && truncate -s 8M $d/b.img
{shlex.join([LKVM, "setup"])} $name >/dev/null
timeout {LKVM_TIMEOUT} {shlex.join(sandbox)} -d $name -d "scsi:$d/a.img" -d "scsi:$d/b.img,ro" \
	-- sh -c {shlex.quote(GUEST)} 2>&1 </dev/null
echo "host: lkvm $?"
/sbin/e2fsck -fn $d/a.img >/dev/null 2>&1; echo "host: e2fsck $?"
echo "host: hello $(/sbin/debugfs -R 'cat /hello' $d/a.img 2>/dev/null)"
echo "host: b.img $(head -c {len(RO_MARK)} $d/b.img)"
rm -rf $d $HOME/.lkvm/$name
"""


# The LIO target vhost-scsi serves: a file backstore as LUN 0 of
# WWPN's TPG 1, made in configfs and taken apart afterwards.
WWPN = "naa.5001405c0ffee001"
NEXUS = "naa.5001405c0ffee002"


def vhost_host_script(kernel: str) -> str:
    sandbox = [LKVM, "sandbox", "-k", kernel, "-m", "256", "-c", "1", "-p", "quiet"]
    return f"""
cfs=/sys/kernel/config
grep -q " $cfs configfs" /proc/mounts || mount -t configfs configfs $cfs
d=$(mktemp -d)
name=vhost-scsi-e2e-$$
truncate -s 64M $d/a.img
b=$cfs/target/core/fileio_0/lkvm$$
t=$cfs/target/vhost/{WWPN}/tpgt_1
mkdir -p $b && echo "fd_dev_name=$d/a.img,fd_dev_size=$((64 << 20))" > $b/control &&
	echo 1 > $b/enable && mkdir -p $t/lun/lun_0 && ln -s $b $t/lun/lun_0/disk &&
	echo {NEXUS} > $t/nexus && echo "host: target ready"
{shlex.join([LKVM, "setup"])} $name >/dev/null
timeout {LKVM_TIMEOUT} {shlex.join(sandbox)} -d $name -d scsi:{WWPN}:1 \
	-- sh -c {shlex.quote(GUEST_SDA)} 2>&1 </dev/null
echo "host: lkvm $?"
rm $t/lun/lun_0/disk; rmdir $t/lun/lun_0; echo NULL > $t/nexus
rmdir $t $cfs/target/vhost/{WWPN} $b
/sbin/e2fsck -fn $d/a.img >/dev/null 2>&1; echo "host: e2fsck $?"
echo "host: hello $(/sbin/debugfs -R 'cat /hello' $d/a.img 2>/dev/null)"
rm -rf $d $HOME/.lkvm/$name
"""


def scsi_kernel(bzimage: str) -> bool:
    config = Path(bzimage).with_name("config")
    return config.is_file() and "CONFIG_SCSI_VIRTIO=y" in config.read_text().splitlines()


def test_mkfs_and_fsck_on_a_scsi_disk(kvmconfig_bzimage, l2host):
    if not scsi_kernel(kvmconfig_bzimage):
        pytest.skip("the kernel of make guest-kernel predates SCSI: run it again")
    r = l2host.run(["sh", "-c", host_script(kvmconfig_bzimage)], timeout=TIMEOUT, cwd=TOP)
    out = r.stdout
    assert "guest: have sda" in out and "guest: have sdb" in out, out + r.stderr
    assert "guest: sda LKVM VIRTUAL DISK" in out, out
    assert "guest: sda rotational 0" in out, out
    assert "guest: sda cache write back" in out, out
    assert "guest: sdb ro 1" in out, out
    assert "guest: mkfs ok" in out and "guest: mounted" in out, out
    assert "guest: big read back" in out, out
    assert "guest: trimmed" in out, out
    assert "guest: fsck 0" in out, out
    assert "guest: sdb WRITTEN" not in out and f"guest: sdb says {RO_MARK}" in out, out
    assert "host: lkvm 0" in out, out
    assert "host: e2fsck 0" in out, out
    assert f"host: hello {PAYLOAD}" in out, out
    assert f"host: b.img {RO_MARK}" in out, out


def test_mkfs_and_fsck_on_a_vhost_scsi_target(kvmconfig_bzimage, l2host):
    if not scsi_kernel(kvmconfig_bzimage):
        pytest.skip("the kernel of make guest-kernel predates SCSI: run it again")
    r = l2host.run(["sh", "-c", vhost_host_script(kvmconfig_bzimage)], timeout=TIMEOUT, cwd=TOP)
    out = r.stdout
    assert "host: target ready" in out, out + r.stderr
    assert "guest: have sda" in out and "guest: have sdb" not in out, out + r.stderr
    # The kernel's target answers, not lkvm's, at the TPG's tag as the target ID.
    assert "guest: sda at 0:0:1:0" in out, out
    assert "guest: sda LIO-ORG" in out, out
    assert "guest: mkfs ok" in out and "guest: mounted" in out, out
    assert "guest: big read back" in out, out
    assert "guest: fsck 0" in out, out
    assert "host: lkvm 0" in out, out
    assert "host: e2fsck 0" in out, out
    assert f"host: hello {PAYLOAD}" in out, out
