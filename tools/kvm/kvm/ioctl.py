"""ioctl on KVM file descriptors, through the uapi module's C glue: the
GIL is dropped for the call, and arguments keep their full width."""

import os

from include.uapi import ffi, lib


def ioctl(fd: int, request: int, arg: object = 0) -> int:
    """Issue `request` on `fd`.  `arg` is an int, or a cffi pointer to a
    struct that the kernel reads or fills in place."""
    if isinstance(arg, int):
        ret = lib.lkvm_ioctl(fd, request, arg)
    else:
        ret = lib.lkvm_ioctl_ptr(fd, request, arg)
    if ret < 0:
        err = ffi.errno
        raise OSError(err, os.strerror(err))
    return ret


def ioctl_fd(fd: int, request: int, arg: object = 0) -> int:
    """An ioctl that returns a new file descriptor, made close-on-exec."""
    new = ioctl(fd, request, arg)
    os.set_inheritable(new, False)
    return new
