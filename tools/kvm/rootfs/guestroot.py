"""What a Linux guest mounts as /, by kvmtool's rules for -d:

    -d FILE[,ro|,snapshot][,direct]
                            a virtio-blk disk; the first is root=/dev/vda
    -d scsi:FILE[,ro|,snapshot][,direct]
                            a LUN of the virtio-scsi adapter, in order
                            (sda, sdb, ...); root=/dev/sda without -d FILE
    -d scsi:WWPN:TPGT       kvmtool's vhost-scsi target (virtio/setup.py)
    -d DIR                  DIR over 9p, booted with the kernel's own init
    -d NAME                 the rootfs ~/.lkvm/NAME over 9p (when NAME is
                            no path here), with the host's / beside it
                            and lkvm's guest init
    none of these, no -i    the rootfs ~/.lkvm/default, made on first use

The 9p root's tag is /dev/root: with no root= on the command line Linux
mounts "/dev/root" with rootfstype, and 9p takes that name as the tag.
"""

import os
from collections.abc import Callable

from kvm.config import Root, Share
from kvm.errors import LkvmError
from rootfs import tree
from util.home import lkvm_dir

ROOT_TAG = "/dev/root"
HOST_TAG = "hostfs"         # what the guest init mounts on /host
P9_ROOT = "rw rootflags=trans=virtio,version=9p2000.L,cache=loose rootfstype=9p"
GUEST_INIT = "init=/virt/init"
SCSI = "scsi:"
SCSI_ROOT = "root=/dev/sda rw"
# What kvmtool adds after a rootfs's init unless --no-dhcp: the kernel
# configures the first NIC itself, so the guest init need not.
DHCP = "ip=dhcp"


SHARE_FLAGS = {"ro": "readonly"}


def parse_share(spec: str) -> Share:
    """--9p DIR[,TAG[,ro]].  A third field was once taken into the tag:
    DIR,TAG,ro made a writable share tagged "TAG,ro"."""
    path, *fields = spec.split(",")
    tag, flags = (fields[0], fields[1:]) if fields else (None, [])
    if not path or tag == "" or any(f not in SHARE_FLAGS for f in flags):
        raise LkvmError(f"--9p {spec}: expected DIR[,TAG[,ro]]")
    if not os.path.isdir(path):
        raise LkvmError(f"--9p {spec}: {path} is not a directory")
    return Share(os.path.realpath(path), tag, **{SHARE_FLAGS[f]: True for f in flags})


def boot_rootfs(name: str, root: Root, dhcp: bool) -> None:
    """Boot ~/.lkvm/NAME: its init, the host's / read-only beside it."""
    path = tree.prepare(name)
    root.shares += [Share(path, ROOT_TAG), Share("/", HOST_TAG, readonly=True)]
    root.cmdline = " ".join([P9_ROOT, GUEST_INIT, *[DHCP] * dhcp])
    root.rootfs = path


def named_rootfs(name: str, root: Root, dhcp: bool) -> None:
    boot_rootfs(name, root, dhcp)
    root.name = name            # kvmtool names the guest after its rootfs


def directory(path: str, root: Root, dhcp: bool) -> None:
    root.shares.append(Share(os.path.realpath(path), ROOT_TAG))
    root.cmdline = P9_ROOT


def disk(spec: str, root: Root, dhcp: bool) -> None:
    root.disks.append(spec)


def scsi(spec: str, root: Root, dhcp: bool) -> None:
    root.scsi.append(spec.removeprefix(SCSI))


def reader(spec: str) -> Callable[[str, Root, bool], None]:
    """How a -d argument is read: a directory, a rootfs name, a SCSI LUN
    or a disk.  virtio/setup.py reads a SCSI spec's file and flags."""
    if spec.startswith(SCSI):
        return scsi
    if os.path.isdir(spec):
        return directory
    if tree.is_name(spec) and os.path.isdir(os.path.join(lkvm_dir(), spec)):
        return named_rootfs
    path = spec.split(",")[0]
    if os.path.isdir(path):
        raise LkvmError(f"--disk {spec}: a directory root takes no options")
    if path and not os.path.exists(path):
        raise LkvmError(f"--disk {spec}: no such file or directory, "
                        f"nor a rootfs in {lkvm_dir()} (see 'lkvm setup')")
    return disk


def choose(disk_specs: list[str], initrd: bool, linux: bool, dhcp: bool = True) -> Root:
    """The root the -d options, an initrd and the kernel's kind ask for.
    Only a Linux kernel gets the default rootfs: anything else takes no
    command line, so it would only be handed the host's / unasked.  A
    rootfs boots with ip=dhcp, as in kvmtool, unless not `dhcp`."""
    root = Root()
    for spec in disk_specs:
        read = reader(spec)
        if read not in (disk, scsi) and root.cmdline is not None:
            raise LkvmError(f"--disk {spec}: only one directory or rootfs can be the root")
        read(spec, root, dhcp)
    if root.cmdline is None and not root.disks and root.scsi:
        root.cmdline = SCSI_ROOT
    if root.cmdline is None and not root.disks and not initrd and linux:
        boot_rootfs(tree.DEFAULT, root, dhcp)
    return root
