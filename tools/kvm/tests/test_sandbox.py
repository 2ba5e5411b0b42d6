"""lkvm sandbox without a guest: the script it writes runs exactly the
command given, the status it reads back is checked, and bad use is one
line."""

import os
import shlex
import subprocess

import pytest

from cli.cmd import load_builtin
from kvm.errors import KVMTOOL_DIE, KVMTOOL_USAGE, LkvmError
from rootfs import tree
from tests.helpers import guest, run_lkvm

sandbox = load_builtin("sandbox")

HOSTILE = ["a b", "it's", "$HOME", "`id`", "$(id)", "\n", "*", "-e", "", "\\", '"', ";exit 3"]


def test_script_runs_the_command_with_its_arguments_verbatim():
    script = sandbox.sandbox_script(["printf", "[%s]\\n", *HOSTILE], "/")
    text = script.decode()
    assert text.startswith("#!/bin/sh\n")
    # The exec line (a quoted newline continues it), run by a real sh,
    # must hand printf the very same words.
    exec_line = text[text.index("\nexec ") + 1:]
    out = subprocess.run(["sh", "-c", exec_line], capture_output=True, check=True).stdout
    assert out.decode() == "".join(f"[{a}]\n" for a in HOSTILE)


def test_script_changes_to_the_hosts_cwd_under_host():
    script = sandbox.sandbox_script(["true"], "/work/it's here/").decode()
    q = shlex.quote("/host/work/it's here")
    assert f"if [ -d {q} ]; then cd {q}; fi" in script
    assert "if [ -d /host ]; then cd /host; fi" in sandbox.sandbox_script(["x"], "/").decode()


def test_script_keeps_undecodable_bytes():
    arg = os.fsdecode(b"caf\xe9")
    assert b"exec ls 'caf\xe9'\n" in sandbox.sandbox_script(["ls", arg], "/")


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    return tree.prepare("default")


@pytest.mark.parametrize("data,status", [(b"7\n", 7), (b"0\n", 0), (b"255", 255)])
def test_exit_status(root, data, status):
    tree.put(root, sandbox.STATUS, data, 0o644)
    assert sandbox.exit_status(root) == status


@pytest.mark.parametrize("data", [None, b"", b"seven\n", b"-1\n", b"256\n", b"9" * 100])
def test_exit_status_refuses(root, data):
    if data is not None:
        tree.put(root, sandbox.STATUS, data, 0o644)
    with pytest.raises(LkvmError):
        sandbox.exit_status(root)


@pytest.mark.parametrize("args,status,message", [
    ((), KVMTOOL_USAGE, "Error: give the command to run"),
    (("--",), KVMTOOL_USAGE, "Error: give the command to run"),
    (("-c", "1"), KVMTOOL_USAGE, "Error: give the command to run"),
    (("-k", guest("hello"), "--", "true"), KVMTOOL_DIE,
     "Fatal: lkvm sandbox runs its command in a rootfs"),
    (("-k", guest("hello"), "true"), KVMTOOL_DIE,
     "Fatal: lkvm sandbox runs its command in a rootfs"),
])
def test_bad_use_is_one_line(tmp_path, monkeypatch, args, status, message):
    monkeypatch.setenv("HOME", str(tmp_path))
    r = run_lkvm("sandbox", *args)
    assert r.returncode == status and b"Traceback" not in r.stderr
    assert r.stderr.decode().strip().startswith(message)


def test_help_lists_the_run_options():
    r = run_lkvm("sandbox", "-h")
    assert r.returncode == 0 and b"Basic options:" in r.stdout


# kvmtool's sandbox: the command starts at the first word that is no run
# option, or after "--"; run options' values and the command's own
# options stay where they are.  (argv, run options, command)
SPLITS = [
    (["ls"], [], ["ls"]),
    (["--", "ls"], [], ["ls"]),
    (["-c", "2", "ls", "-l"], ["-c", "2"], ["ls", "-l"]),
    (["--cpus=2", "-m", "64", "make", "-C", "x"], ["--cpus=2", "-m", "64"], ["make", "-C", "x"]),
    (["--cpu", "2", "ls", "--cpu"], ["--cpu", "2"], ["ls", "--cpu"]),
    (["-p", "-x", "--rng", "sh", "-c", "exit 3"], ["-p", "-x", "--rng"], ["sh", "-c", "exit 3"]),
    (["-d", "box", "--", "--weird"], ["-d", "box"], ["--weird"]),
    (["-c", "1"], ["-c", "1"], []),
]


@pytest.mark.parametrize("argv,options,command", SPLITS, ids=[" ".join(a) for a, *_ in SPLITS])
def test_command_starts_at_the_first_word_no_option_takes(argv, options, command):
    assert load_builtin("run").parser().split_at_operand(argv) == (options, command)
