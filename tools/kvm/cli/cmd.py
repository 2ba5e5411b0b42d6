"""What every builtin command shares: option parsing that fails in one
line, and help text read from Documentation/."""

import argparse
import importlib.util
import itertools
import os
import re
import sys
from types import ModuleType

from cli.usage import Groups, format_usage
from kvm.errors import LkvmError, UsageError
from kvm.tree import KVMDIR, TOP

DOC_DIR = os.path.join(TOP, "Documentation")


def load_builtin(name: str) -> ModuleType:
    """builtin-<name>.py, loaded by path: the hyphen is the kernel's
    spelling.  Loaded once, so a command may build on another's."""
    key = f"builtin_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            key, os.path.join(KVMDIR, f"builtin-{name}.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[key] = module
    return sys.modules[key]


def doc_path(cmd: str) -> str:
    return os.path.join(DOC_DIR, f"lkvm-{cmd}.txt")


def show_doc(cmd: str) -> int:
    """Print Documentation/lkvm-CMD.txt, as `lkvm help CMD` does."""
    try:
        with open(doc_path(cmd)) as f:
            sys.stdout.write(f.read())
    except FileNotFoundError:
        raise LkvmError(f"no help for '{cmd}'") from None
    return 0


UNRECOGNIZED = "unrecognized arguments: "   # argparse's words
FORMATTER_WIDTH = 80
# What --no-OPTION sets OPTION's destination to, by the kind of option.
NEGATED = {
    argparse._StoreTrueAction: lambda action: False,
    argparse._StoreFalseAction: lambda action: True,
    argparse._StoreAction: lambda action: action.default,
    argparse._StoreConstAction: lambda action: action.default,
}


class HelpRequested(Exception):
    """-h or --help: the exception's text is the command's option list."""


class Parser(argparse.ArgumentParser):
    """argparse, but errors are one line, -h lists the options grouped as
    kvmtool lists them and long options may be abbreviated as kvmtool's
    parse_options() allows.  The manual page is `lkvm help CMD`'s."""

    def __init__(self, cmd: str, synopsis: str = "", groups: Groups = (), **kw: object) -> None:
        super().__init__(prog=f"lkvm {cmd}", add_help=False, allow_abbrev=False, **kw)
        self.cmd = cmd
        self.synopsis = synopsis or f"lkvm {cmd} [<options>]"
        self.groups = groups
        self._negated = False
        self.add_argument("-h", "--help", action="store_true", help=argparse.SUPPRESS)

    def format_help(self) -> str:
        return format_usage(self.synopsis, self, self.groups)

    def _get_formatter(self) -> argparse.HelpFormatter:
        """argparse makes a formatter at each add_argument(), only to check
        the option's metavar, and each asked the terminal its width (and
        imported shutil for it): a tenth of lkvm run's start.  lkvm's help
        is cli/usage.py's, which needs no width."""
        return self.formatter_class(prog=self.prog, width=FORMATTER_WIDTH)

    def error(self, message: str) -> None:
        """One line; an unknown option in kvmtool's words (its
        parse_long_opt() and parse_short_opt() refusals)."""
        if message.startswith(UNRECOGNIZED):
            word = message.removeprefix(UNRECOGNIZED).partition(" ")[0]
            if word.startswith("--"):
                message = f"unknown option `{word[2:].partition('=')[0]}'"
            elif word.startswith("-") and word != "-":
                message = f"unknown switch `{word[1]}'"
        raise UsageError(f"{message} (see 'lkvm help {self.cmd}')")

    def negations(self) -> None:
        """--no-OPTION for each option that takes one value or none, as
        kvmtool's parse_options() reads it: a flag cleared, a value back
        to its default.  Added once, when the command's options are all
        in; hidden from -h as in kvmtool's usage."""
        if self._negated:
            return
        self._negated = True
        for action in list(self._actions):
            unset = NEGATED.get(type(action))
            if unset is None or action.nargs not in (None, 0):
                continue
            for name in action.option_strings:
                negated = "--no-" + name[2:]
                if name.startswith("--") and not name.startswith("--no-") and \
                        negated not in self._option_string_actions:
                    self.add_argument(negated, action="store_const", dest=action.dest,
                                      const=unset(action), help=argparse.SUPPRESS)

    def parse(self, argv: list[str]) -> argparse.Namespace:
        args = self.parse_args(self.unabbreviate(argv))
        if args.help:
            raise HelpRequested(self.format_help())
        return args

    def unabbreviate(self, argv: list[str]) -> list[str]:
        """argv with each long option spelled out: an exact name wins, else
        the one option the text begins (--cpu for --cpus); several are an
        error naming the last two, in kvmtool's words.  Option values and
        everything after "--" are left as they are.  (argparse's own
        abbreviations would do, but its ambiguity message is not kvmtool's.)"""
        self.negations()
        actions = self._option_string_actions
        longs = [name for action in self._actions for name in action.option_strings
                 if name.startswith("--")]
        out: list[str] = []
        words = iter(argv)
        for word in words:
            if word == "--":
                out += [word, *words]
                break
            name, eq, value = word.partition("=")
            if name.startswith("--") and name not in actions:
                matches = [long for long in longs if long.startswith(name)]
                if len(matches) > 1:
                    raise UsageError(f"Ambiguous option: {word[2:]} "
                                     f"(could be {matches[-2]} or {matches[-1]})")
                name = matches[0] if matches else name
                word = name + eq + value
            out.append(word)
            action = actions.get(name) if name.startswith("-") else None
            if action is not None and not eq and action.nargs is None:
                out += itertools.islice(words, 1)   # its value, whatever it looks like
        return out

    def split_at_operand(self, argv: list[str]) -> tuple[list[str], list[str]]:
        """(the options, the rest) of argv, split where kvmtool's
        PARSE_OPT_STOP_AT_NON_OPTION stops: at the first word that is
        neither an option nor an option's value, or after a "--"."""
        i = 0
        while i < len(argv):
            word = argv[i]
            if word == "--":
                return argv[:i], argv[i + 1:]
            if not word.startswith("-") or word == "-":
                break
            name, eq, _ = self.unabbreviate([word])[0].partition("=")
            action = self._option_string_actions.get(name)
            i += 2 if action is not None and not eq and action.nargs is None else 1
        return argv[:i], argv[i:]


# kvmtool's parse_mem_unit(): one letter, either case; none means MiB.
MEM_SHIFTS = {"B": 0, "K": 10, "M": 20, "G": 30, "T": 40, "P": 50}
MEM_SIZE = re.compile(r"\s*\+?([0-9]+)([BKMGTP]?)", re.IGNORECASE)
U64_MAX = (1 << 64) - 1


def size_mib(text: str) -> int:
    """-m as kvmtool's mem_parser() reads it: a decimal number of MiB, or
    of bytes, KiB, GiB, TiB or PiB with a B, K, G, T or P suffix; no
    fractions, nothing after the suffix, not 0, and no more than 64 bits
    of bytes.  lkvm's guests have whole MiB of RAM, so a size in B or K
    must come to that.  Its refusals are kvmtool's die()s (status 128),
    not usage errors: LkvmError passes through argparse."""
    m = MEM_SIZE.fullmatch(text)
    if m is None:
        raise LkvmError(f"Invalid memory specifier: {text}")
    size = int(m[1]) << MEM_SHIFTS[(m[2] or "M").upper()]
    if size > U64_MAX:
        raise LkvmError(f"Memory too large: {text}")
    if size == 0:
        raise LkvmError(f"Invalid RAM size: {text}")
    if size % (1 << 20):
        raise LkvmError(f"Invalid RAM size: {text}: lkvm gives guests whole MiB of RAM")
    return size >> 20
