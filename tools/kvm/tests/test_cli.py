"""The command line as a user meets it: help, version, and bad input
answered in one line with a non-zero exit."""

from tests.helpers import guest, run_lkvm


def lines(data: bytes) -> list[str]:
    return data.decode().strip().splitlines()


def test_no_command_prints_usage():
    r = run_lkvm()
    assert r.returncode == 0
    assert b"usage: lkvm" in r.stdout and b"run" in r.stdout


def test_help_lists_commands():
    r = run_lkvm("help")
    assert r.returncode == 0
    for cmd in (b"run", b"sandbox", b"version", b"help"):
        assert b"   " + cmd in r.stdout


def test_help_run_shows_the_document():
    a, b = run_lkvm("help", "run"), run_lkvm("run", "--help")
    assert a.returncode == b.returncode == 0
    assert a.stdout == b.stdout
    assert b"--cpus" in a.stdout and b"lkvm-run" in a.stdout


def test_version():
    a, b = run_lkvm("version"), run_lkvm("--version")
    assert a.returncode == b.returncode == 0
    assert a.stdout == b.stdout and a.stdout.startswith(b"lkvm version ")


def test_unknown_command():
    r = run_lkvm("frob")
    assert r.returncode == 1
    assert lines(r.stderr)[0] == "Fatal: 'frob' is not a lkvm command."
    assert b"Traceback" not in r.stderr


def one_fatal_line(r) -> str:
    assert r.returncode != 0
    assert b"Traceback" not in r.stderr
    fatal = [line for line in lines(r.stderr) if line.startswith("Fatal:")]
    assert len(fatal) == 1, r.stderr
    return fatal[0]


def test_missing_kernel():
    r = run_lkvm("run", "/nonexistent")
    assert "unable to open kernel /nonexistent" in one_fatal_line(r)


def test_bad_options():
    assert "--frob" in one_fatal_line(run_lkvm("run", "--frob"))
    assert "at least one vCPU" in one_fatal_line(run_lkvm("run", "-c", "0", guest("hello")))
    assert "not a memory size" in one_fatal_line(run_lkvm("run", "-m", "lots", guest("hello")))
    assert "more than the host" in one_fatal_line(run_lkvm("run", "-m", "64T", guest("hello")))
    assert "either as -k" in one_fatal_line(run_lkvm("run", "-k", "a", "b"))


def test_every_command_has_its_document():
    from kvm.commands import COMMANDS
    for name, _ in COMMANDS:
        r = run_lkvm("help", name)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(f"lkvm-{name}(1)".encode()), name
