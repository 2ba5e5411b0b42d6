"""lkvm sandbox [run options] [--] COMMAND [ARGS...]: run one command in a
rootfs guest and exit with its exit status.  As in kvmtool, the command
starts at the first word that is no run option (or after "--").

The command goes into the rootfs as a script; the guest init runs it
instead of a shell (lkvm_sandbox=) and writes its exit status into the
rootfs (lkvm_status=), which lkvm reads once the guest has ended.
kvmtool's sandbox loses that status; lkvm's does not."""

import os
import shlex

from cli.cmd import load_builtin
from kvm.errors import LkvmError, UsageError
from rootfs import tree

SCRIPT = "virt/sandbox.sh"
STATUS = "virt/.status"
PARAMS = f"lkvm_sandbox=/{SCRIPT} lkvm_status=/{STATUS}"
STATUS_MAX = 16     # bytes of the status file worth reading


def sandbox_script(command: list[str], cwd: str) -> bytes:
    """A sh script running command in the host's cwd, as seen under /host.
    exec, so the command's exit status is the script's."""
    here = shlex.quote("/host" + cwd.rstrip("/"))
    lines = ["#!/bin/sh",
             "# lkvm sandbox: the command to run, written at every run",
             f"if [ -d {here} ]; then cd {here}; fi",
             "exec " + shlex.join(command)]
    # Arguments are bytes to the kernel; undecodable ones came in as
    # surrogates and go back out as the same bytes.
    return os.fsencode("\n".join(lines) + "\n")


def exit_status(root: str) -> int:
    data = tree.get(root, STATUS, STATUS_MAX)
    try:
        status = int(data)
    except (TypeError, ValueError):
        raise LkvmError(f"the guest ended without an exit status in {root}/{STATUS} "
                        "(did the command crash the guest?)") from None
    if not 0 <= status <= 255:
        raise LkvmError(f"{root}/{STATUS}: {status} is no exit status")
    return status


def cmd_sandbox(argv: list[str]) -> int:
    run = load_builtin("run")
    parser = run.parser()
    options, command = parser.split_at_operand(argv)
    if not command:
        parser.parse(options)       # -h, or a bad option, is told first
        raise UsageError("give the command to run: "
                         "lkvm sandbox [run options] [--] COMMAND [ARGS...]")
    cfg = run.configure(options, PARAMS)
    root = cfg.root.rootfs
    if root is None:
        raise LkvmError("lkvm sandbox runs its command in a rootfs: "
                        "give no -d, no -i, or -d with a rootfs name")
    tree.remove(root, STATUS)
    tree.put(root, SCRIPT, sandbox_script(command, os.getcwd()), 0o755)
    status = run.launch(cfg)
    return status if status else exit_status(root)
