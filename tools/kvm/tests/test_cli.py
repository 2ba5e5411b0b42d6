"""The command line as a user meets it: help, version, and bad input
answered in one line with a non-zero exit."""

import os
import shutil
import subprocess
import sys

import pytest

from cli.cmd import Parser, load_builtin, size_mib
from cli.commands import COMMANDS
from kvm.errors import KVMTOOL_DIE, KVMTOOL_USAGE, LkvmError, UsageError
from kvm.version import VERSION
from tests.helpers import KVMDIR, LKVM, TINY_TIMEOUT, guest, run_lkvm


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
    r = run_lkvm("help", "run")
    assert r.returncode == 0
    assert r.stdout.startswith(b"lkvm-run(1)") and b"--cpus" in r.stdout


def test_run_help_lists_the_options_grouped_as_kvmtool():
    """usage_with_options(): the usage line, then each group's title and
    its options, kvmtool's groups in kvmtool's order, the arch's last."""
    a, b = run_lkvm("run", "--help"), run_lkvm("run", "-h")
    assert a.returncode == b.returncode == 0
    assert a.stdout == b.stdout
    out = a.stdout.decode().splitlines()
    assert out[:2] == ["", " usage: lkvm run [<options>] [<kernel image>]"]
    titles = [line for line in out if line.endswith(":") and not line.startswith(" ")]
    assert titles == ["Basic options:", "Kernel options:", "Networking options:",
                      "Debug options:", "Arch-specific options:"]
    assert "    -c, --cpus <n>        number of vCPUs" in out
    assert "    -m, --mem <size[BKMGTP]>" in out
    body = "\n".join(out)
    basic, kernel = body.index("Basic options:"), body.index("Kernel options:")
    assert basic < body.index("--cpus") < body.index("--console") < kernel
    assert kernel < body.index("--kernel") < body.index("--params") < body.index("Networking")
    for action in load_builtin("run").parser()._actions:
        names = [n for n in action.option_strings if n.startswith("--")]
        if names and names[0] != "--help":
            assert body.count(f"{names[0]} ") + body.count(f"{names[0]}\n") == 1, names


def test_every_command_lists_its_options():
    for cmd in ("list", "stat", "debug", "balloon", "pause", "stop"):
        r = run_lkvm(cmd, "-h")
        assert r.returncode == 0 and r.stderr == b"", cmd
        assert r.stdout.decode().splitlines()[1] == f" usage: lkvm {cmd} [<options>]"


def test_version():
    a, b = run_lkvm("version"), run_lkvm("--version")
    assert a.returncode == b.returncode == 0
    # kvmtool's builtin-version.c: "kvm tool %s\n"
    assert a.stdout == b.stdout == f"kvm tool {VERSION}\n".encode()


def test_unknown_command():
    r = run_lkvm("frob")
    assert r.returncode == KVMTOOL_USAGE
    assert lines(r.stderr)[0] == "Error: 'frob' is not a lkvm command."
    assert b"Traceback" not in r.stderr


def test_unbuilt_launcher_is_a_fatal_error(tmp_path):
    shutil.copy(LKVM, tmp_path / "lkvm")
    r = subprocess.run([tmp_path / "lkvm", "version"], capture_output=True, timeout=TINY_TIMEOUT)
    assert r.returncode == KVMTOOL_DIE
    assert lines(r.stderr) == [f"Fatal: lkvm is not built yet: run 'make' in {tmp_path}"]


# kvmtool's exit statuses: die() is 128 (util/util.c); parse_options() and
# usage_with_options() refuse a command line with 129 (util/parse-options.c).
# (argv, status, the first word of the one line on stderr)
STATUSES = [
    (("run", "--frob", "{hello}"), KVMTOOL_USAGE, "Error:"),     # unknown option
    (("run", "--no-frob", "{hello}"), KVMTOOL_USAGE, "Error:"),
    (("run", "-Z", "{hello}"), KVMTOOL_USAGE, "Error:"),         # unknown switch
    (("run", "{hello}", "-c"), KVMTOOL_USAGE, "Error:"),         # a value missing
    (("run", "--console", "x", "{hello}"), KVMTOOL_USAGE, "Error:"),
    (("run", "-k", "{hello}", "{hello}"), KVMTOOL_USAGE, "Error:"),
    (("stat", "-n", "x"), KVMTOOL_USAGE, "Error:"),              # no command option
    (("debug", "-n", "x"), KVMTOOL_USAGE, "Error:"),
    (("balloon", "-n", "x"), KVMTOOL_USAGE, "Error:"),
    (("stop",), KVMTOOL_USAGE, "Error:"),                       # neither -n nor -a
    (("run", "/nonexistent"), KVMTOOL_DIE, "Fatal:"),
    (("run", "-c", "0", "{hello}"), KVMTOOL_DIE, "Fatal:"),
    (("stop", "-n", "no-such-guest"), KVMTOOL_DIE, "Fatal:"),
    (("help", "frob"), KVMTOOL_DIE, "Fatal:"),
]


@pytest.mark.parametrize("argv,status,prefix", STATUSES, ids=[" ".join(a) for a, *_ in STATUSES])
def test_exit_status_is_kvmtools(lkvm_home, argv, status, prefix):
    r = run_lkvm(*[a.format(hello=guest("hello")) for a in argv])
    assert r.returncode == status, r.stderr
    assert b"Traceback" not in r.stderr
    assert [line.split()[0] for line in lines(r.stderr)] == [prefix], r.stderr


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
    assert "at least one vCPU" in one_fatal_line(run_lkvm("run", "-c", "0", guest("hello")))
    assert "Invalid memory specifier: lots" in one_fatal_line(
        run_lkvm("run", "-m", "lots", guest("hello")))


def small_parser():
    p = Parser("t")
    p.add_argument("--cpus")
    p.add_argument("--console")
    p.add_argument("--debug", action="store_true")
    p.add_argument("--debug-ioport", action="store_true")
    p.add_argument("--debug-mmio", action="store_true")
    p.add_argument("-p", "--params")
    p.add_argument("image", nargs="?")
    return p


# kvmtool's parse_long_opt(): an exact name wins, a prefix of one option
# is that option, a prefix of several is refused naming the last two.
PREFIXES = [
    (["--cpu", "2"], ["--cpus", "2"]),
    (["--cpu=2"], ["--cpus=2"]),
    (["--cons", "serial", "--cp", "1"], ["--console", "serial", "--cpus", "1"]),
    (["--debug"], ["--debug"]),                         # exact, though a prefix of more
    (["--debug-io"], ["--debug-ioport"]),
    (["--par", "--cpu"], ["--params", "--cpu"]),         # a value is never expanded
    (["-p", "--cpu"], ["-p", "--cpu"]),
    (["k", "--", "--cpu"], ["k", "--", "--cpu"]),
    (["--frob"], ["--frob"]),                           # unknown: argparse refuses it
]


@pytest.mark.parametrize("argv,spelled", PREFIXES, ids=[" ".join(a) for a, _ in PREFIXES])
def test_long_option_prefixes(argv, spelled):
    assert small_parser().unabbreviate(argv) == spelled


@pytest.mark.parametrize("word,message", [
    ("--c", "Ambiguous option: c (could be --cpus or --console)"),
    ("--debug-", "Ambiguous option: debug- (could be --debug-ioport or --debug-mmio)"),
    ("--de=1", "Ambiguous option: de=1 (could be --debug-ioport or --debug-mmio)"),
])
def test_ambiguous_prefix_is_refused_as_kvmtool_does(word, message):
    with pytest.raises(UsageError) as e:
        small_parser().unabbreviate([word])
    assert str(e.value) == message and e.value.status == KVMTOOL_USAGE


# kvmtool's parse_long_opt() takes --no-NAME for any option NAME (its
# OPT_UNSET): a flag cleared, a value back to none; prefixes as before.
NEGATIONS = [
    (["--debug", "--no-debug"], {"debug": False}),
    (["--no-debug", "--debug"], {"debug": True}),
    (["--params", "x", "--no-params"], {"params": None}),
    (["--debug-mmio", "--no-debug-m"], {"debug_mmio": False}),
]


@pytest.mark.parametrize("argv,values", NEGATIONS, ids=[" ".join(a) for a, _ in NEGATIONS])
def test_no_option_undoes_it_as_in_kvmtool(argv, values):
    args = vars(small_parser().parse(argv))
    assert {k: args[k] for k in values} == values


def test_negations_stay_out_of_the_option_list():
    p = small_parser()
    p.negations()
    assert "--no-debug" in p._option_string_actions and "no-debug" not in p.format_help()


@pytest.mark.parametrize("word,message", [
    ("--frob", "unknown option `frob'"), ("--frob=1", "unknown option `frob'"),
    ("-Z", "unknown switch `Z'"), ("--no-frob", "unknown option `no-frob'"),
])
def test_unknown_options_in_kvmtools_words(word, message):
    with pytest.raises(UsageError) as e:
        small_parser().parse([word])
    assert str(e.value) == f"{message} (see 'lkvm help t')"


def test_prefixes_as_a_user_types_them(lkvm_home):
    r = run_lkvm("run", "--cpu", "1", "--me", "16", "--kern", guest("hello"))
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"Hello, lkvm!\n"
    r = run_lkvm("run", "--debug-", guest("hello"))
    assert r.returncode == KVMTOOL_USAGE
    assert lines(r.stderr)[0].startswith("Error: Ambiguous option: debug- (could be --debug-")


# -m as kvmtool's mem_parser() reads it (builtin-run.c): decimal, one
# optional suffix of B, K, M, G, T or P in either case (none is M), no
# fractions, not 0, no more than 64 bits of bytes.  lkvm's own limit:
# whole MiB.  (value, MiB or the start of the one Fatal line)
MEM_SIZES = [
    ("64", 64), ("64M", 64), ("64m", 64), ("1G", 1024), ("1g", 1024), ("2T", 2 << 20),
    ("1P", 1 << 30), ("1048576K", 1024), ("16777216B", 16), ("16777216b", 16), ("+16", 16),
    ("1.5", "Invalid memory specifier: 1.5"), ("1.5G", "Invalid memory specifier: 1.5G"),
    ("64MB", "Invalid memory specifier: 64MB"), ("64MiB", "Invalid memory specifier: 64MiB"),
    ("-5", "Invalid memory specifier: -5"), ("0x10", "Invalid memory specifier: 0x10"),
    ("", "Invalid memory specifier: "), ("lots", "Invalid memory specifier: lots"),
    ("0", "Invalid RAM size: 0"), ("0G", "Invalid RAM size: 0G"),
    ("512B", "Invalid RAM size: 512B: lkvm gives guests whole MiB"),
    ("16384P", "Memory too large: 16384P"),
    ("99999999999999999999", "Memory too large: 99999999999999999999"),
]


@pytest.mark.parametrize("text,expected", MEM_SIZES, ids=[t or "empty" for t, _ in MEM_SIZES])
def test_mem_sizes_read_as_kvmtool_reads_them(text, expected):
    if isinstance(expected, int):
        assert size_mib(text) == expected
        return
    with pytest.raises(LkvmError) as e:
        size_mib(text)
    assert str(e.value).startswith(expected) and e.value.status == KVMTOOL_DIE


def test_mem_above_host_ram_warns_and_runs(lkvm_home):
    host = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") >> 20
    r = run_lkvm("run", "-c", "1", "-m", str(host + 1), guest("hello"))
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"Hello, lkvm!\n"
    assert lines(r.stderr)[0] == (f"Warning: Guest memory size {host + 1}MB exceeds host "
                                  f"physical RAM size {host}MB")


# lkvm run with KVM_CAP_MAX_VCPUS answering 1, as a small host's KVM would.
ONE_VCPU_KVM = """
import sys
sys.path.insert(0, {kvmdir!r})
from include.uapi import lib
from kvm.kvm import Kvm
real = Kvm.check_extension
Kvm.check_extension = lambda self, cap: 1 if cap == lib.KVM_CAP_MAX_VCPUS else real(self, cap)
import lkvm
sys.argv = ["lkvm", "run", "-c", "3", "-m", "16", {hello!r}]
lkvm.main()
"""


def test_cpus_above_kvms_limit_are_clamped_with_a_warning(lkvm_home):
    """kvmtool's kvm_cpu__init(): more vCPUs than KVM_CAP_MAX_VCPUS are cut
    down to it, with a warning, and the guest runs."""
    script = ONE_VCPU_KVM.format(kvmdir=KVMDIR, hello=guest("hello"))
    r = subprocess.run([sys.executable, "-c", script], capture_output=True,
                       stdin=subprocess.DEVNULL, timeout=TINY_TIMEOUT)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"Hello, lkvm!\n"
    err = lines(r.stderr)
    assert err[0] == "Warning: # Limit the number of CPUs to 1"
    assert " -c 1 --name " in err[1]


# lkvm stat -m: kvmtool's builtin-stat.c words for the ten statistics
# Linux's balloon driver sends, in its order, each value right after them.
KVMTOOL_MEMSTAT = [
    ("VIRTIO_BALLOON_S_SWAP_IN", "The amount of memory that has been swapped in (in bytes):"),
    ("VIRTIO_BALLOON_S_SWAP_OUT",
     "The amount of memory that has been swapped out to disk (in bytes):"),
    ("VIRTIO_BALLOON_S_MAJFLT", "The number of major page faults that have occurred:"),
    ("VIRTIO_BALLOON_S_MINFLT", "The number of minor page faults that have occurred:"),
    ("VIRTIO_BALLOON_S_HTLB_PGALLOC", "The number of successful HugeTLB allocations:"),
    ("VIRTIO_BALLOON_S_HTLB_PGFAIL", "The number of failed HugeTLB allocations:"),
    ("VIRTIO_BALLOON_S_MEMFREE",
     "The amount of memory not being used for any purpose (in bytes):"),
    ("VIRTIO_BALLOON_S_MEMTOT", "The total amount of memory (in bytes):"),
    ("VIRTIO_BALLOON_S_AVAIL", "The estimated available memory (in bytes):"),
    ("VIRTIO_BALLOON_S_CACHES", "The amount of memory in use for file caching (in bytes):"),
]


def test_stat_shows_kvmtools_ten_statistics_in_its_order():
    from include.uapi import lib
    stat = load_builtin("stat")
    tags = [getattr(lib, name) for name, _ in KVMTOOL_MEMSTAT]
    sent = [(tag, 1000 + i) for i, tag in enumerate(tags)]
    reply = [*reversed(sent), (42, 7)]          # any order, and a tag kvmtool has no words for
    assert stat.memstat_lines(reply) == [
        *(f"{words}{1000 + i}" for i, (_, words) in enumerate(KVMTOOL_MEMSTAT)),
        "Unknown memory statistic (ID 42): 7"]


def test_every_command_has_its_document():
    for name, _ in COMMANDS:
        r = run_lkvm("help", name)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(f"lkvm-{name}(1)".encode()), name


@pytest.fixture
def odd_files(tmp_path):
    """A FIFO, an empty file, a plain directory and a small ELF, to be
    named where lkvm wants an image or a hugetlbfs mount."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "dir").mkdir()
    shutil.copy("/bin/true", tmp_path / "elf")      # an ELF, as a vmlinux is
    return tmp_path


# (arguments, what the one Fatal: line says); {t} is the odd_files dir.
BAD_INPUT = [
    (("run", "-m", "inf", "{hello}"), "Invalid memory specifier: inf"),
    (("run", "-m", "1e400", "{hello}"), "Invalid memory specifier: 1e400"),
    (("run", "-m", "nan", "{hello}"), "Invalid memory specifier: nan"),
    (("run", "-c", "256", "{hello}"), "at most 255 vCPUs"),
    (("run", "-c", "257", "{hello}"), "at most 255 vCPUs"),
    (("run", "-c", "1024", "{hello}"), "at most 255 vCPUs"),
    (("debug", "-n", "X", "-m", "4294967296"), "not a vCPU number"),
    (("run", "--disk", "{t}/fifo", "{hello}"), "not a regular file or block device"),
    (("run", "--disk", "{t}/fifo,ro", "{hello}"), "not a regular file or block device"),
    (("run", "-k", "{t}/empty"), "is empty"),
    (("run", "-k", "{t}/fifo"), "not a regular file"),
    (("run", "-k", "/dev/zero"), "not a regular file"),
    (("run", "-i", "/dev/zero", "{hello}"), "not a regular file"),
    (("run", "-m", "1", "-k", "/usr/bin/python3"), "larger than the guest's 1 MiB"),
    (("run", "-m", "1", "-k", "{t}/elf"), "needs RAM above it"),
    (("run", "--hugetlbfs", "{t}/dir", "{hello}"), "not a hugetlbfs mount"),
]


@pytest.mark.parametrize("argv,message", BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_bad_input_is_one_line(odd_files, lkvm_home, argv, message):
    argv = [a.format(t=odd_files, hello=guest("hello")) for a in argv]
    assert message in one_fatal_line(run_lkvm(*argv, timeout=TINY_TIMEOUT))


def test_255_vcpus_still_run(lkvm_home):
    r = run_lkvm("run", "-c", "255", "-m", "64", guest("hello"))
    assert r.returncode == 0, r.stderr
