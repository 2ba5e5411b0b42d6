"""Issue 11 item 5: lkvm run takes the whole hard RLIMIT_NOFILE."""

import resource
import subprocess

from tests.helpers import LKVM, TINY_TIMEOUT, guest
from tests.test_ipc_guests import read_until


def test_lkvm_run_takes_the_whole_hard_limit(lkvm_home, kvm_available):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    p = subprocess.Popen(
        [LKVM, "run", "-c", "1", "-m", "16", "--name", "fds", guest("idle")],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)))
    try:
        # The socket exists once devices are set up: the limit is raised by then.
        read_until(p.stderr, b"# lkvm run")
        with open(f"/proc/{p.pid}/limits") as f:
            line = next(ln for ln in f if ln.startswith("Max open files"))
        assert line.split()[3:5] == [str(hard), str(hard)]
    finally:
        p.kill()
        p.wait(TINY_TIMEOUT)
        p.stderr.close()
