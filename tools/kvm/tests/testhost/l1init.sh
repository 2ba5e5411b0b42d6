#!/bin/sh
# /init of the L1 test host (busybox sh). Builds a root from the host's /
# (read-only 9p) under a tmpfs overlay, so the host's paths are valid here and
# anything written stays in L1's memory; then serves jobs from the host over
# a control port until told to quit.
#
# From the kernel command line (see hosts.py):
#   testhost_ctl   the control port's device
#   testhost_lkvm  where lkvm's checkout goes when the root is not the host's
#                  / (another architecture's L1): the "lkvm" share with the
#                  "arch" share, that architecture's builds (the bindings,
#                  the guest init), laid over it
#   testhost_cache where the test host's cache goes, read-only, when the root
#                  is not the host's / (the L2 kernels and initramfs)

/bin/busybox --install -s /bin
export PATH=/bin

fail() {
	echo "testhost-l1: $*"
	poweroff -f
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

while read -r ko params; do
	insmod "/lib/modules/$ko" $params || fail "insmod $ko failed"
done < /etc/modules
echo "testhost-l1: modules loaded"

# The host's / is cached (cache=loose: Python starts 4x faster than with
# cache=none), so files the host changes while L1 runs must appear under new
# names, as the test host's cache and pytest's tmp_path do. The results share
# is written by both sides and stays uncached.
p9=trans=virtio,version=9p2000.L,msize=262144
mount -t 9p -o "ro,cache=loose,$p9" hostfs /lower || fail "cannot mount the host's /"
mount -t tmpfs -o mode=0755 tmpfs /rw
mkdir /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot ||
	fail "cannot mount the overlay root"

if [ -n "$testhost_lkvm" ]; then
	mkdir -p /lkvm /arch "/newroot$testhost_lkvm" &&
		mount -t 9p -o "ro,cache=loose,$p9" lkvm /lkvm &&
		mount -t 9p -o "ro,cache=loose,$p9" arch /arch &&
		mount -t overlay -o lowerdir=/arch:/lkvm overlay "/newroot$testhost_lkvm" ||
		fail "cannot mount lkvm's checkout"
fi
if [ -n "$testhost_cache" ]; then
	mkdir -p "/newroot$testhost_cache" &&
		mount -t 9p -o "ro,cache=loose,$p9" cache "/newroot$testhost_cache" ||
		fail "cannot mount the test host's cache"
fi

cd /newroot
mkdir -p proc sys dev run
mount -t proc proc proc
mount -t sysfs sysfs sys
mount -t devtmpfs devtmpfs dev
mkdir -p dev/pts dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts dev/pts
mount -t tmpfs -o mode=1777 tmpfs dev/shm
mount -t tmpfs -o mode=0755 tmpfs run
mkdir run/testhost
mount -t 9p -o "$p9" results run/testhost || fail "cannot mount the results share"
ip link set lo up  # the host's loopback, which passt's guests reach
cd /
echo "testhost-l1: root ready"

# A job runs in the new root as its /: in a mount namespace of its own,
# where the root is moved onto / as switch_root does.  Under a chroot the
# kernel refuses the job user namespaces, which passt sandboxes itself in.
inroot='cd /newroot && mount --move . / && exec chroot . "$@"'

# The control channel: the host sends "RUN <job>", "CONSOLE <job>" or "QUIT";
# each job is <job>.sh in the results share and is answered with
# "DONE <job> <status>". RUN keeps the job's output in the share; CONSOLE
# gives the job L1's console as its terminal, for a person at the keyboard.
# L1 also sends "HB <memory available> <tmpfs used>" every 2 s, which the
# host reads as "still alive" and reports when the beats stop.
con=$(cat /sys/class/tty/console/active)
con=/dev/${con##* }
ctl=$testhost_ctl
stty -F "$ctl" raw -echo || fail "no control port"
exec 3<>"$ctl"
echo READY >&3
beat() {
	while read -r key kb _; do
		[ "$key" = MemAvailable: ] && break
	done </proc/meminfo
	set -- $(df -k /rw | tail -n 1)
	echo "HB MemAvailable=${kb}k tmpfs=${3}k" >&3
}
while :; do beat; sleep 2; done &
beat=$!
while read -r verb job <&3; do
	case $verb in
	RUN)
		r=/run/testhost/$job
		unshare -m sh -c "$inroot" job /bin/sh "$r.sh" </dev/null >"/newroot$r.out" \
			2>"/newroot$r.err"
		echo "DONE $job $?" >&3
		;;
	CONSOLE)
		r=/run/testhost/$job
		setsid -c unshare -m sh -c "$inroot" job /bin/sh "$r.sh" <>"$con" >&0 2>&0
		echo "DONE $job $?" >&3
		;;
	QUIT)
		break
		;;
	esac
done
kill $beat
sync
poweroff -f
