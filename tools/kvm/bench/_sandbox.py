"""What the in-guest benchmarks share: lkvm and QEMU both booting the
rootfs `lkvm sandbox` uses, so the two differ only in the VMM.  Not a
benchmark itself (run.py skips names that start with '_')."""

import os
from collections.abc import Sequence

from cli.cmd import load_builtin
from rootfs import guestroot, tree

KVMDIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LKVM = os.path.join(os.path.dirname(os.path.dirname(KVMDIR)), "lkvm")
RAM_MIB = "256"


def qemu_on_rootfs(kernel: str, command: list[str], shares: Sequence[tuple[str, str]] = (),
                   extra: Sequence[str] = ()) -> list[str]:
    """QEMU on the default rootfs, running `command` through the script
    lkvm sandbox writes; `shares` are more (path, tag) 9p shares and
    `extra` more QEMU options."""
    sandbox = load_builtin("sandbox")
    root = tree.prepare(tree.DEFAULT)
    tree.put(root, sandbox.SCRIPT, sandbox.sandbox_script(command, "/"), 0o755)
    append = " ".join(["console=ttyS0 quiet panic=-1", guestroot.P9_ROOT,
                       guestroot.GUEST_INIT, sandbox.PARAMS])
    cmd = ["qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-m", RAM_MIB,
           "-smp", "1", "-nodefaults", "-no-reboot", "-display", "none",
           "-serial", "stdio", "-kernel", kernel, "-append", append, *extra]
    every = [(root, guestroot.ROOT_TAG, ""), ("/", guestroot.HOST_TAG, ",readonly=on"),
             *((path, tag, "") for path, tag in shares)]
    for i, (path, tag, flags) in enumerate(every):
        cmd += ["-fsdev", f"local,id=fs{i},path={path},security_model=none,"
                          f"multidevs=remap{flags}",
                "-device", f"virtio-9p-pci,fsdev=fs{i},mount_tag={tag}"]
    return cmd
