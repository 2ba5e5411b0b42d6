"""Every command's options with good, bad and random values (hypothesis):
whatever the user types, lkvm ends with status 0 or one line on stderr
and a non-zero status, never a traceback or a hang, and known-bad input
never succeeds.

Most cases run lkvm's main() in-process, with `lkvm run`'s launch
replaced by a stub that opens the disks as launch does and boots
nothing (the fuzz is about the command line, not about guests); a few
go through ./lkvm in a subprocess, as a user runs it.  --slow runs many
more of both.
"""

import argparse
import contextlib
import io
import os
import signal
import sys
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lkvm
from cli.cmd import load_builtin
from cli.commands import COMMANDS
from ipc.client import instance_parser
from tests.helpers import TINY_TIMEOUT, guest, run_lkvm
from virtio.setup import parse_disk

CASES, SLOW_CASES = 100, 5_000                  # in-process, per command
PROCESS_CASES, SLOW_PROCESS_CASES = 6, 100      # through ./lkvm, all commands
CASE_TIMEOUT = 20                               # seconds: more is a hang
FUZZ = settings(deadline=None, database=None, suppress_health_check=list(HealthCheck))

# Files a value may name; created by the `files` fixture under {t}.
HELLO = guest("hello")
PATHS = ["{t}/fifo", "{t}/empty", "{t}/dir", "{t}/disk.img", "{t}/disk.img,ro",
         "{t}/nothing", "/dev/zero", "/dev/null", "/", "", "{t}/dir,tag", HELLO]
NUMBERS = ["0", "1", "-1", "2", "16", "64", "255", "256", "257", "1024", "4294967296",
           "2147483648", "1e400", "inf", "-inf", "nan", "1.5", "0x10", "64M", "1G", "1T",
           "64T", "lots", "", " ", "1K", "99999999999999999999999"]
# Things argv can carry: no NUL (execve cannot pass one); undecodable
# bytes arrive as surrogate escapes.
TEXT = st.text(st.characters(blacklist_characters="\0", blacklist_categories=["Cs"]),
               max_size=12) | st.sampled_from(["\udcff", "a\udc80b", "-", "--", "-x"])


@dataclass
class Option:
    names: list[str]                                # with the prefixes that name it alone
    takes_value: bool
    appends: bool                                   # repeatable: every value counts
    bad: list[str] = field(default_factory=list)    # values that must fail
    good: list[str] = field(default_factory=list)   # values that are fine alone


def unique_prefixes(long: str, longs: list[str]) -> list[str]:
    """The abbreviations kvmtool's parse_options() reads as `long`."""
    return [long[:n] for n in range(3, len(long))
            if [other for other in longs if other.startswith(long[:n])] == [long]]


def ambiguous_prefixes(longs: list[str]) -> list[str]:
    """Abbreviations of several options and of none exactly: refused."""
    return sorted({long[:n] for long in longs for n in range(3, len(long))
                   if long[:n] not in longs
                   and sum(other.startswith(long[:n]) for other in longs) > 1})


# What is known about some options' values: (good, bad).  Any other
# option gets random text and paths, judged by nothing but the rules.
KNOWN = {
    "--cpus": (["1", "2"], ["0", "-1", "256", "257", "1024", "x", "1.5", "inf"]),
    "--mem": (["16", "64M", "16777216B"], ["inf", "nan", "1e400", "0", "-5", "lots", "1.5",
                                           "64MB", "512B", "16384P"]),
    "--kernel": ([HELLO], ["{t}/fifo", "{t}/empty", "/dev/zero", "{t}/dir", "{t}/nothing"]),
    "--initrd": ([], ["{t}/fifo", "{t}/empty", "/dev/zero", "{t}/dir", "{t}/nothing"]),
    "--disk": (["{t}/disk.img", "{t}/disk.img,ro"], ["{t}/fifo", "{t}/fifo,ro",
                                                      "{t}/nothing", "{t}/disk.img,frob"]),
    "--9p": (["{t}/dir", "{t}/dir,tag", "{t}/dir,tag,ro"],
             ["{t}/nothing", "{t}/dir,", "{t}/dir,tag,rw", "{t}/empty"]),
    "--hugetlbfs": ([], ["{t}/dir", "{t}/nothing", "{t}/empty"]),
    "--console": (["serial", "virtio"], ["x", ""]),
    "--virtio-transport": (["pci", "mmio"], ["x", "PCI"]),
    "--nmi": (["0"], ["-1", "4294967296", "x"]),
    "--inflate": (["16"], ["0", "-1", "2147483648", "x"]),
    "--deflate": (["16"], ["0", "-1", "2147483648", "x"]),
}


def long_names(parser) -> list[str]:
    return [n for action in parser._actions for n in action.option_strings if n.startswith("--")]


def options_of(parser) -> list[Option]:
    out = []
    longs = long_names(parser)
    for action in parser._actions:
        if not action.option_strings or "--help" in action.option_strings:
            continue
        long = next((n for n in action.option_strings if n.startswith("--")), None)
        good, bad = KNOWN.get(long, ([], []))
        prefixes = unique_prefixes(long, longs) if long else []
        out.append(Option(action.option_strings + prefixes, action.nargs != 0,
                          isinstance(action, argparse._AppendAction), bad, good))
    return out


def stat_parser():
    p = instance_parser("stat")
    p.add_argument("-m", "--memory", action="store_true")
    p.add_argument("--json", action="store_true")
    return p


# Each command: its options, and what a bare argument is (None: takes none).
PARSERS = {
    "run": lambda: load_builtin("run").parser(),
    "sandbox": lambda: load_builtin("run").parser(),
    "list": lambda: load_builtin("list").parser(),
    "debug": lambda: load_builtin("debug").parser(),
    "balloon": lambda: load_builtin("balloon").parser(),
    "stat": stat_parser,
    "pause": lambda: instance_parser("pause"),
    "resume": lambda: instance_parser("resume"),
    "stop": lambda: instance_parser("stop"),
    "setup": lambda: None,
    "version": lambda: None,
    "help": lambda: None,
}
BARE = {"run": PATHS, "setup": ["box", "a/b", ".x", "", "default", "x" * 300],
        "help": [name for name, _ in COMMANDS] + ["frob", "../x", ""]}


def test_every_command_is_fuzzed():
    assert set(PARSERS) == {name for name, _ in COMMANDS}


@st.composite
def command_lines(draw, cmd: str) -> tuple[list[str], bool]:
    """(argv, whether it holds a value known to be bad)."""
    parser = PARSERS[cmd]()
    options = options_of(parser) if parser is not None else []
    # Whether each option's value is bad: the last one given, as argparse
    # keeps only that, or any one of a repeatable option's.
    argv, bad, marks = [cmd], False, {}
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["option", "option", "unknown", "bare"]))
        if kind == "unknown":
            ambiguous = ambiguous_prefixes(long_names(parser)) if parser is not None else []
            argv.append(draw(st.sampled_from(["--frob", "-Z", "--cpux", "--mem=", "---",
                                              *ambiguous])))
            # help and version take no options, and ignore words, as kvmtool's.
            bad = bad or (parser is not None and argv[-1] != "--mem=")
            continue
        if kind == "bare" or not options:
            argv.append(draw(st.sampled_from(BARE.get(cmd, PATHS)) | TEXT))
            continue
        opt = draw(st.sampled_from(options))
        argv.append(draw(st.sampled_from(opt.names)))
        if not opt.takes_value:
            continue
        value = draw(st.sampled_from(["good", "bad", "any"]) if opt.bad or opt.good
                     else st.just("any"))
        if value == "bad" and opt.bad:
            argv.append(draw(st.sampled_from(opt.bad)))
        elif value == "good" and opt.good:
            argv.append(draw(st.sampled_from(opt.good)))
        else:
            argv.append(draw(st.sampled_from(PATHS + NUMBERS) | TEXT))
        this = value == "bad" and bool(opt.bad)
        key = opt.names[-1]
        marks[key] = (marks.get(key, False) or this) if opt.appends else this
    if cmd == "sandbox":     # the command, after "--" or, as in kvmtool, without it
        argv += draw(st.sampled_from([["--"], []])) + [draw(TEXT), draw(TEXT)]
    return argv, bad or any(marks.values())


@pytest.fixture
def files(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "dir").mkdir()
    (tmp_path / "disk.img").write_bytes(bytes(4096))
    return str(tmp_path)


def launch_disks_only(cfg) -> int:
    """What launch checks of the user's input before KVM is involved."""
    for spec in cfg.disks:
        parse_disk(spec).close()
    return 0


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang(f"no answer in {CASE_TIMEOUT} s")


def lkvm_in_process(argv: list[str]) -> tuple[int, str]:
    """lkvm's main() on argv: (exit status, stderr).  Exceptions other than
    SystemExit propagate: they are what a user would see as a traceback."""
    err, out = io.StringIO(), io.StringIO()
    saved = sys.argv
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CASE_TIMEOUT)
    try:
        sys.argv = ["lkvm", *argv]
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                lkvm.main()
            except SystemExit as e:
                return e.code, err.getvalue()
        raise AssertionError("main() returned without exiting")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        sys.argv = saved


def check(argv: list[str], bad: bool, status: int, stderr: str) -> None:
    lines = [ln for ln in stderr.split("\n") if ln.strip()]    # as a terminal shows them
    assert "Traceback" not in stderr, (argv, stderr)
    if bad:
        assert status != 0, (argv, stderr)
    if status != 0:
        assert len(lines) == 1, (argv, stderr)
        assert lines[0].lstrip().startswith(("Fatal:", "Error:")), (argv, stderr)


@pytest.mark.parametrize("cmd", sorted(PARSERS))
def test_fuzz_command_line_in_process(cmd, files, lkvm_home, monkeypatch, request):
    monkeypatch.setattr(load_builtin("run"), "launch", launch_disks_only)
    monkeypatch.chdir(files)
    cases = SLOW_CASES if request.config.getoption("--slow") else CASES
    ran = 0

    @settings(FUZZ, max_examples=cases)
    @given(command_lines(cmd))
    def case(line: tuple[list[str], bool]) -> None:
        nonlocal ran
        ran += 1
        argv = [a.replace("{t}", files) for a in line[0]]
        status, stderr = lkvm_in_process(argv)
        check(argv, line[1], status, stderr)

    case()
    print(f"{cmd}: {ran} command lines")
    assert ran >= min(cases, 50)


def test_fuzz_command_line_as_a_user_runs_it(files, lkvm_home, request):
    """Through ./lkvm: what really reaches the terminal.  Only bad lines,
    so no guest is ever booted."""
    cases = SLOW_PROCESS_CASES if request.config.getoption("--slow") else PROCESS_CASES
    ran = 0

    @settings(FUZZ, max_examples=cases)
    @given(st.sampled_from(sorted(PARSERS)).flatmap(command_lines).filter(lambda line: line[1]))
    def case(line: tuple[list[str], bool]) -> None:
        nonlocal ran
        argv, bad = [a.replace("{t}", files) for a in line[0]], line[1]
        ran += 1
        r = run_lkvm(*argv, timeout=TINY_TIMEOUT)
        check(argv, bad, r.returncode, r.stderr.decode(errors="replace"))

    case()
    print(f"./lkvm: {ran} bad command lines")
    assert ran >= cases


def test_every_ambiguous_prefix_is_refused_as_kvmtool_does(files, lkvm_home, monkeypatch):
    """Every abbreviation of two or more options of every command: status
    129 and kvmtool's one line, never a guess."""
    monkeypatch.setattr(load_builtin("run"), "launch", launch_disks_only)
    tried = 0
    for cmd, make in sorted(PARSERS.items()):
        parser = make()
        if parser is None:
            continue
        for prefix in ambiguous_prefixes(long_names(parser)):
            status, stderr = lkvm_in_process([cmd, prefix])
            assert status == 129, (cmd, prefix, stderr)
            assert stderr.startswith(f"  Error: Ambiguous option: {prefix[2:]} (could be --"), \
                (cmd, prefix, stderr)
            assert stderr.count("\n") == 1, stderr
            tried += 1
    assert tried >= 10
