"""Load: 16 tiny guests booted from one rootfs, 1,000 IPC requests with
garbage mixed in, from four clients at once, then `lkvm stop -a`.
Nothing may leak: no fd or thread in any guest's lkvm, no socket in
~/.lkvm, no temporary file in the rootfs, no fd or child of ours."""

import json
import os
import random
import socket
import subprocess
import threading
from contextlib import ExitStack

import pytest

from ipc import protocol
from ipc.client import connect
from rootfs import tree
from tests.helpers import TINY_TIMEOUT, run_lkvm
from tests.test_ipc_guests import running
from util.home import lkvm_dir

pytestmark = pytest.mark.usefixtures("kvm_available", "lkvm_home")

GUESTS = 16
REQUESTS = 1_000
CLIENTS = 4
IO_TIMEOUT = 30     # one request, or one guest's answer to garbage

# Requests a guest must answer, and garbage it must survive.
VALID = [
    (protocol.PID, b""), (protocol.VMSTATE, b""), (protocol.PAUSE, b""), (protocol.RESUME, b""),
    (protocol.STAT, b""), (protocol.BALLOON, protocol.S32.pack(16)),
    (protocol.DEBUG, protocol.DEBUG_PARAMS.pack(protocol.DEBUG_DUMP, 0, b"\0")),
]
# (garbage, whether the guest must answer it by closing the connection):
# else we hang up ourselves, mid-request.
GARBAGE = [
    (lambda r: r.randbytes(r.randint(1, 64)), False),
    (lambda r: protocol.HEADER.pack(protocol.PID, protocol.MAX_PAYLOAD + 1), True),
    (lambda r: protocol.HEADER.pack(r.randint(9, (1 << 32) - 1), 0), True),
    (lambda r: protocol.HEADER.pack(protocol.PAUSE, 3) + b"abc", True),
    (lambda r: protocol.HEADER.pack(protocol.DEBUG, 12)[:r.randint(1, 7)], False),
    (lambda r: protocol.HEADER.pack(protocol.DEBUG, 12) + bytes(r.randint(0, 11)), False),
]


def fds(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def garbage(name: str, data: bytes, answered: bool) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(IO_TIMEOUT)
        s.connect(os.path.join(lkvm_dir(), f"{name}.sock"))
        s.sendall(data)
        while answered and s.recv(4096):
            pass        # until the guest hangs up


def drive(names: list[str], seed: int, count: int, errors: list) -> None:
    r = random.Random(seed)
    try:
        for _ in range(count):
            name = r.choice(names)
            if r.random() < 0.3:
                make, answered = r.choice(GARBAGE)
                garbage(name, make(r), answered)
                continue
            msg_type, payload = r.choice(VALID)
            with connect(name) as g:
                try:
                    g.request(msg_type, payload)
                except Exception as e:      # refusals (no balloon) are fine
                    if "no balloon device" not in str(e):
                        raise
    except Exception as e:
        errors.append(e)


def settled(name: str, pid: int) -> tuple[int, int]:
    """A guest's fds and threads, running, with one connection open and
    every earlier client's hang-up handled: the guest answered twice on
    it since they hung up."""
    with connect(name) as g:
        g.request(protocol.PAUSE)
        g.request(protocol.RESUME)
        g.pid()
        g.pid()
        return fds(pid), threads(pid)


def temp_files(root: str) -> list[str]:
    return [os.path.join(d, n) for d, _, files in os.walk(root) for n in files
            if ".lkvm-" in n]


def children() -> bytes:
    """This process's child processes (the session's test host may be one)."""
    return subprocess.run(["pgrep", "-P", str(os.getpid())], capture_output=True).stdout


def test_sixteen_guests_under_a_thousand_requests():
    before = fds()
    kids = children()
    box = tree.create("box")
    names = [f"load{i:02}" for i in range(GUESTS)]
    with ExitStack() as stack:
        procs = [stack.enter_context(running(n, opts=("-d", "box"))) for n in names]
        # Once a pause has parked every vCPU, all threads are up: take
        # each guest's fds and threads then.
        base = {n: settled(n, p.pid) for n, p in zip(names, procs, strict=True)}

        errors: list = []
        clients = [threading.Thread(target=drive, args=(names, seed, REQUESTS // CLIENTS,
                                                        errors))
                   for seed in range(CLIENTS)]
        for t in clients:
            t.start()
        listed = json.loads(run_lkvm("list", "--json", "-i").stdout)
        for t in clients:
            t.join(TINY_TIMEOUT * 10)
        assert not any(t.is_alive() for t in clients) and not errors, errors
        assert sorted(row["name"] for row in listed) == names   # none hidden under load

        assert {n: settled(n, p.pid) for n, p in zip(names, procs, strict=True)} == base

        r = run_lkvm("stop", "-a")
        assert r.returncode == 0, r.stderr
        assert [p.wait(TINY_TIMEOUT) for p in procs] == [0] * GUESTS
    assert [n for n in os.listdir(lkvm_dir()) if n.endswith(".sock")] == []
    assert temp_files(box) == []
    assert fds() == before
    assert children() == kids
