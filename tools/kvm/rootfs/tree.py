"""Root filesystems under ~/.lkvm, as 'lkvm setup' makes them: a small
tree whose /bin, /lib, /usr ... point into the host's root (mounted at
/host by the guest init), so the guest runs the host's programs.

Once a guest has booted a rootfs, everything in it is the guest's: any
directory may have become a symlink to anywhere on the host.  So lkvm
reaches files in a rootfs only through put(), get() and remove(), which
walk the path without following symlinks and replace files by rename."""

import errno
import os
import re
import stat

from kvm.errors import LkvmError
from kvm.tree import TOP
from util.home import lkvm_dir

DIRS = ("dev", "etc", "home", "host", "proc", "root", "sys", "tmp", "var", "var/lib",
        "virt", "virt/home")
HOST_LINKS = ("bin", "lib", "lib64", "sbin", "usr", "etc/ld.so.conf")
GUEST_INIT = os.path.join(TOP, "tools", "kvm", "guest", "init")
PASSWD = "root:x:0:0:root:/root:/bin/sh\n"
DEFAULT = "default"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
TMP_MODE = 0o1777   # any guest user may write /tmp, only the owner delete
TMP_TRIES = 16      # 64 random bits each: a clash means someone guesses them
DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def is_name(name: str) -> bool:
    return bool(NAME.match(name))


def rootfs_path(name: str) -> str:
    if not is_name(name):
        raise LkvmError(f"'{name}' is not a rootfs name: use letters, digits, '.', '_', '-'")
    return os.path.join(lkvm_dir(), name)


def _open_dir(root: str, rel: str) -> int:
    """An O_PATH descriptor for the directory root/rel, no symlink followed."""
    fd = os.open(root, DIR_FLAGS)
    try:
        for name in filter(None, rel.split("/")):
            fd, parent = os.open(name, DIR_FLAGS, dir_fd=fd), fd
            os.close(parent)
    except OSError as e:
        os.close(fd)
        raise LkvmError(f"{os.path.join(root, rel)}: {e.strerror} "
                        "(not a directory of the rootfs any more?)") from None
    return fd


def put(root: str, rel: str, data: bytes, mode: int) -> None:
    """Make root/rel a regular file holding data.  Written beside and
    renamed over, so a symlink or FIFO the guest left there is replaced,
    never written through.  The name beside is random and made with
    O_EXCL: a guest that pre-creates every name lkvm could pick (a pid
    suffix has only pid_max of them) would keep it from ever booting."""
    dirname, name = os.path.split(rel)
    dfd = _open_dir(root, dirname)
    tmp = None
    try:
        fd, tmp = _create_beside(dfd, name, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), mode)     # what the umask took away
        os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    except OSError as e:
        if tmp is not None:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except OSError:
                pass
        raise LkvmError(f"cannot write {os.path.join(root, rel)}: {e.strerror}") from None
    finally:
        os.close(dfd)


def random_hex() -> str:
    """16 random hex digits, a temporary name's tail.  (os.urandom, as the
    secrets module would use: importing that is a cost every lkvm run
    paid, rootfs or not.)"""
    return os.urandom(8).hex()


def _create_beside(dfd: int, name: str, mode: int) -> tuple[int, str]:
    """A new file .NAME.lkvm-RANDOM in dfd, opened for writing."""
    for _ in range(TMP_TRIES):
        tmp = f".{name}.lkvm-{random_hex()}"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                           | os.O_CLOEXEC, mode, dir_fd=dfd), tmp
        except FileExistsError:
            continue
    raise OSError(errno.EEXIST, "no free temporary name")


def get(root: str, rel: str, limit: int) -> bytes | None:
    """At most limit bytes of the regular file root/rel; None when there
    is no such file (a symlink, FIFO or device is no such file)."""
    dirname, name = os.path.split(rel)
    dfd = _open_dir(root, dirname)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=dfd)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ELOOP, errno.ENXIO):
            return None
        raise LkvmError(f"cannot read {os.path.join(root, rel)}: {e.strerror}") from None
    finally:
        os.close(dfd)
    try:
        return os.read(fd, limit) if stat.S_ISREG(os.fstat(fd).st_mode) else None
    finally:
        os.close(fd)


def remove(root: str, rel: str) -> None:
    """Unlink root/rel (whatever it is now) if it is there."""
    dirname, name = os.path.split(rel)
    dfd = _open_dir(root, dirname)
    try:
        os.unlink(name, dir_fd=dfd)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise LkvmError(f"cannot remove {os.path.join(root, rel)}: {e.strerror}") from None
    finally:
        os.close(dfd)


def install_init(root: str) -> None:
    """Copy the guest init in; done at every run so a rebuilt init is used."""
    try:
        with open(GUEST_INIT, "rb") as f:
            init = f.read()
    except FileNotFoundError:
        raise LkvmError(f"{GUEST_INIT} is not built: run make") from None
    put(root, "virt/init", init, 0o755)


def copy_resolv(root: str) -> None:
    try:
        with open("/etc/resolv.conf", "rb") as f:
            resolv = f.read()
    except OSError:
        return  # a host without resolv.conf gives a guest without DNS, no more
    put(root, "etc/resolv.conf", resolv, 0o644)


def create(name: str) -> str:
    """Make ~/.lkvm/NAME; it must not exist yet."""
    root = rootfs_path(name)
    try:
        os.mkdir(os.path.join(lkvm_dir(create=True), name), 0o755)
        for d in DIRS:
            os.makedirs(os.path.join(root, d), exist_ok=True)
        os.chmod(os.path.join(root, "tmp"), TMP_MODE)
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
