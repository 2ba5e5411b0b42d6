"""The network bench's code paths, without booting: its host server
against its guest client (run here, on the loopback), the command lines
of each VMM and back end, and the report (the bench itself boots Linux
guests, which only `make bench` does)."""

import subprocess
import sys

from tests.test_bench_blk import load


def test_the_guest_client_measures_against_the_host_server():
    bench = load("net_guest")
    with bench.server() as port:
        r = subprocess.run([sys.executable, "-c", bench.CLIENT, "127.0.0.1", str(port),
                            str(1 << 20), "20"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    got = bench.parse(r.stdout)
    assert sorted(got) == sorted(bench.TESTS) and all(v > 0 for v in got.values())


def test_each_vmm_gets_the_same_back_end():
    bench = load("net_guest")
    command = bench.guest_command(1234, 1, 10)
    assert command[:2] == ["sh", "-c"] and "192.168.33.1 1234 1048576 10" in command[2]
    nics = {}
    for backend in bench.BACKENDS:
        with bench.lkvm("bzImage", backend, command) as (cmd, fds):
            nics[backend] = cmd[cmd.index("-n") + 1]
            assert "--no-dhcp" in cmd and cmd[-len(command):] == command and fds == ()
    assert nics == {"passt": "mode=user", "tap": "mode=tap", "vhost": "mode=tap,vhost=1"}


def test_a_failed_test_leaves_the_others(capsys):
    bench = load("net_guest")
    got = bench.parse("BENCH start\nBENCH g2h failed: ConnectionResetError(104)\n"
                      "BENCH h2g 2000000 2\nBENCH rr 100 0.5\n")
    assert got == {"h2g": 1.0, "rr": 200.0}
    bench.report({"lkvm passt": got, "qemu passt": got}, 1, 100)
    ratio = capsys.readouterr().out.splitlines()[-1].split()
    assert ratio == ["lkvm/qemu", "passt", "-", "1.00", "1.00"]


def test_report_has_a_ratio_per_back_end(capsys):
    bench = load("net_guest")
    results = {f"{vmm} {b}": {t: 90.0 if vmm == "lkvm" else 100.0 for t in bench.TESTS}
               for b in bench.BACKENDS for vmm in bench.VMMS}
    bench.report(results, 1, 10)
    out = capsys.readouterr().out
    for b in bench.BACKENDS:
        assert f"lkvm/qemu {b}" in out
    assert out.count("0.90") == 3 * len(bench.TESTS)
