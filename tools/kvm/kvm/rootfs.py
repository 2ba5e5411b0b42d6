"""Root filesystems under ~/.lkvm, as 'lkvm setup' makes them: a small
tree whose /bin, /lib, /usr ... point into the host's root (mounted at
/host by the guest init), so the guest runs the host's programs."""

import os
import re
import shutil

from kvm.cmd import TOP
from kvm.errors import LkvmError
from kvm.home import lkvm_dir

DIRS = ("dev", "etc", "home", "host", "proc", "root", "sys", "tmp", "var", "var/lib",
        "virt", "virt/home")
HOST_LINKS = ("bin", "lib", "lib64", "sbin", "usr", "etc/ld.so.conf")
GUEST_INIT = os.path.join(TOP, "tools", "kvm", "guest", "init")
PASSWD = "root:x:0:0:root:/root:/bin/sh\n"
DEFAULT = "default"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def rootfs_path(name: str) -> str:
    if not NAME.match(name):
        raise LkvmError(f"'{name}' is not a rootfs name: use letters, digits, '.', '_', '-'")
    return os.path.join(lkvm_dir(), name)


def install_init(root: str) -> None:
    """Copy the guest init in; done at every run so a rebuilt init is used."""
    if not os.path.exists(GUEST_INIT):
        raise LkvmError(f"{GUEST_INIT} is not built: run make")
    tmp = os.path.join(root, "virt", ".init.tmp")
    shutil.copy2(GUEST_INIT, tmp)
    os.replace(tmp, os.path.join(root, "virt", "init"))


def copy_resolv(root: str) -> None:
    try:
        shutil.copyfile("/etc/resolv.conf", os.path.join(root, "etc", "resolv.conf"))
    except OSError:
        pass  # a host without resolv.conf gives a guest without DNS, no more


def create(name: str) -> str:
    """Make ~/.lkvm/NAME; it must not exist yet."""
    root = rootfs_path(name)
    try:
        os.mkdir(os.path.join(lkvm_dir(create=True), name), 0o755)
        for d in DIRS:
            os.makedirs(os.path.join(root, d), exist_ok=True)
        for link in HOST_LINKS:
            os.symlink(os.path.join("/host", link), os.path.join(root, link))
        with open(os.path.join(root, "etc", "passwd"), "w") as f:
            f.write(PASSWD)
    except FileExistsError:
        raise LkvmError(f"a rootfs named {name} already exists in {root}") from None
    except OSError as e:
        raise LkvmError(f"cannot create {root}: {e.strerror}") from None
    install_init(root)
    return root


def prepare(name: str) -> str:
    """The rootfs NAME ready to boot, made on first use as kvmtool does
    for 'default'."""
    root = rootfs_path(name)
    if not os.path.isdir(root):
        create(name)
    install_init(root)
    copy_resolv(root)
    return root
