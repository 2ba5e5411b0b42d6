"""virtio-vsock with a Linux guest, on each back end (through the nested
test host where this KVM can't run Linux; its kernel has vhost_vsock).
One boot each: the guest connects to a host listener on port 5000 and
sends 1 MiB, which the host hashes and answers; then the guest listens
on port 1024, says so through host port 5001, and the host connects in
and sends 1 MiB the guest hashes and answers.  Host programs use the
unix sockets of lkvm's own back end (`<base>_5000`, `CONNECT 1024`) or
AF_VSOCK with vhost-vsock.  The guest's side is Python from the host's
root.  Needs the kernel `make guest-kernel` builds (CONFIG_VIRTIO_VSOCKETS)."""

import hashlib

import pytest

from tests.helpers import LKVM, TOP

pytestmark = pytest.mark.e2e

TIMEOUT = 400           # one boot on a loaded machine, as the other e2e tests
LKVM_TIMEOUT = 300      # the host program's bound on lkvm, well inside TIMEOUT
CID = 7
BLOB = 1 << 20

GUEST = r"""
import hashlib, os, socket, sys
BLOB = int(sys.argv[1])
def drain(s):
    out = b""
    while data := s.recv(1 << 16):
        out += data
    return out
blob = os.urandom(BLOB)
print("guest: blob", hashlib.sha256(blob).hexdigest(), len(blob), flush=True)
s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
s.settimeout(120)
s.connect((socket.VMADDR_CID_HOST, 5000))
s.sendall(blob)
s.shutdown(socket.SHUT_WR)
print("guest: host says", drain(s).decode(), flush=True)
s.close()
srv = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
srv.bind((socket.VMADDR_CID_ANY, 1024))
srv.listen()
srv.settimeout(120)
r = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
r.connect((socket.VMADDR_CID_HOST, 5001))
r.sendall(b"listening")
r.close()
c, peer = srv.accept()
c.settimeout(120)
got = drain(c)
c.sendall(hashlib.sha256(got).hexdigest().encode())
c.close()
print("guest: from host", hashlib.sha256(got).hexdigest(), len(got), "peer cid", peer[0],
      flush=True)
"""

HOST = r"""
import hashlib, os, socket, subprocess, sys, time
backend, kernel, lkvm, guest = sys.argv[1:5]
CID, BLOB, LKVM_TIMEOUT = map(int, sys.argv[5:8])
name = "vsock-e2e-" + backend
base = os.path.join(os.environ["HOME"], ".lkvm", name + ".vsock")
deadline = time.monotonic() + LKVM_TIMEOUT

def listen(port):
    if backend == "user":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        os.makedirs(os.path.dirname(base), exist_ok=True)
        s.bind(f"{base}_{port}")
    else:
        s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        s.bind((socket.VMADDR_CID_ANY, port))
    s.listen()
    s.settimeout(1)
    return s

def accept(srv):
    while time.monotonic() < deadline and lkvm_proc.poll() is None:
        try:
            c, _ = srv.accept()
        except socket.timeout:
            continue
        c.settimeout(120)
        return c
    finish("host: no connection from the guest")

def drain(s):
    out = b""
    while data := s.recv(1 << 16):
        out += data
    return out

def connect_in(port):
    if backend == "vhost":
        s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        s.settimeout(120)
        s.connect((CID, port))
        return s
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(120)
    s.connect(base)
    s.sendall(f"CONNECT {port}\n".encode())
    line = b""
    while not line.endswith(b"\n"):
        line += s.recv(1)
    print("host: connect reply", line.decode().split()[0], flush=True)
    return s

def finish(why=None):
    if why:
        print(why, flush=True)
        lkvm_proc.kill()
    try:
        rc = lkvm_proc.wait(max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        lkvm_proc.kill()
        rc = lkvm_proc.wait()
    print(lkvm_proc.stdout.read().decode(errors="replace"), flush=True)
    print("host: lkvm", rc, flush=True)
    sys.exit(0)

data_srv, ready_srv = listen(5000), listen(5001)
cmd = [lkvm, "sandbox", "-k", kernel, "-m", "256", "-c", "1", "-p", "quiet",
       "--name", name, "--vsock", str(CID), "--vsock-backend", backend,
       "--", "/usr/bin/python3", "-c", guest, str(BLOB)]
lkvm_proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
c = accept(data_srv)
start = time.monotonic()
got = drain(c)
took = time.monotonic() - start
print("host: from guest", hashlib.sha256(got).hexdigest(), len(got), flush=True)
print(f"host: guest to host {len(got) / took / 1e6:.2f} MB/s", flush=True)
c.sendall(b"host got " + hashlib.sha256(got).hexdigest().encode())
c.close()
r = accept(ready_srv)
print("host: guest is", drain(r).decode(), flush=True)
r.close()
blob = os.urandom(BLOB)
print("host: blob", hashlib.sha256(blob).hexdigest(), len(blob), flush=True)
start = time.monotonic()
s = connect_in(1024)
s.sendall(blob)
s.shutdown(socket.SHUT_WR)
reply = drain(s).decode()
took = time.monotonic() - start
print("host: guest says", reply, flush=True)
print(f"host: host to guest {len(blob) / took / 1e6:.2f} MB/s", flush=True)
s.close()
for port in (5000, 5001):
    if backend == "user":
        os.unlink(f"{base}_{port}")
finish()
"""


def host_program(backend: str, kernel: str) -> list[str]:
    return ["/usr/bin/python3", "-c", HOST, backend, kernel, LKVM, GUEST,
            *map(str, (CID, BLOB, LKVM_TIMEOUT))]


def field(out: str, prefix: str) -> str:
    lines = [line for line in out.splitlines() if line.startswith(prefix)]
    assert lines, f"no {prefix!r} in:\n{out}"
    return lines[-1][len(prefix):].strip()


@pytest.mark.parametrize("backend", ["user", "vhost"])
def test_guest_and_host_connect_to_each_other(backend, kvmconfig_bzimage, l2host):
    r = l2host.run(host_program(backend, kvmconfig_bzimage), timeout=TIMEOUT, cwd=TOP)
    out = r.stdout + r.stderr
    print(out)                  # both ends' lines, for the record (pytest -s)
    assert "host: lkvm 0" in out, out
    guest_blob = field(out, "guest: blob ")
    assert field(out, "host: from guest ") == guest_blob, out
    assert field(out, "guest: host says ") == "host got " + guest_blob.split()[0], out
    assert field(out, "host: guest is ") == "listening", out
    host_blob = field(out, "host: blob ")
    assert field(out, "guest: from host ") == f"{host_blob} peer cid 2", out
    assert field(out, "host: guest says ") == host_blob.split()[0], out
    if backend == "user":
        assert field(out, "host: connect reply ") == "OK", out
    assert hashlib.sha256(b"").hexdigest() not in out, out     # nothing came through empty
