#!/bin/sh
# /init of an L2 test guest (busybox sh): load the virtio drivers, run the
# test's /test.sh, print its status, then reboot, which ends both QEMU
# (-no-reboot) and lkvm.

/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

while read -r ko; do
	insmod "/lib/modules/$ko" || echo "testhost-l2: insmod $ko failed"
done < /etc/modules

sh /test.sh
echo "testhost-l2: exit $?"
reboot -f
