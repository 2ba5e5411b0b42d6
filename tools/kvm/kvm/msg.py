"""Telling the user things, the one way lkvm does: a line on stderr,
indented, with kvmtool's prefix for how much it matters (its util.c's
pr_info, pr_warning, pr_err, pr_debug and die).  --loglevel picks how
much: kvmtool's levels, info by default; errors are always told."""

import sys

from kvm.errors import LkvmError

# kvmtool's --loglevel names, least told first.
LEVELS = {"error": 0, "warning": 1, "info": 2, "debug": 3}
DEFAULT_LEVEL = "info"
_level = LEVELS[DEFAULT_LEVEL]


def check_level(name: str) -> str:
    if name not in LEVELS:
        raise LkvmError(f"Unknown loglevel: {name} (one of {', '.join(LEVELS)})")
    return name


def set_level(name: str) -> None:
    global _level
    _level = LEVELS[check_level(name)]


def _say(prefix: str, text: str, fresh_line: bool = False, level: str = "error") -> None:
    if LEVELS[level] > _level:
        return
    # Guest output may have left the cursor mid-line: start a new one.
    print(("\n" if fresh_line else "") + f"  {prefix}{text}", file=sys.stderr)


def debug(text: str) -> None:
    _say("Debug: ", text, level="debug")


def trace(exc: BaseException) -> None:
    """The Python traceback of an exception lkvm did not expect, only under
    --loglevel debug: the user is told in one line by the caller, as kvmtool
    tells every error, and whoever debugs lkvm asks for the rest."""
    if _level >= LEVELS["debug"]:
        import traceback  # with linecache and tokenize: not on every start's path
        traceback.print_exception(exc, file=sys.stderr)


def info(text: str) -> None:
    _say("Info: ", text, level="info")


def warning(text: str) -> None:
    _say("Warning: ", text, level="warning")


def error(text: str, fresh_line: bool = False) -> None:
    _say("Error: ", text, fresh_line)


def report(prefix: str, text: str) -> None:
    """What ends lkvm, under the prefix its kind of error carries."""
    _say(prefix, text)


def fatal(text: str) -> None:
    """What ends lkvm; the caller exits non-zero."""
    _say("Fatal: ", text)


def note(text: str, fresh_line: bool = False) -> None:
    """kvmtool's "  # " lines (the run banner, the session's end), kept as
    they are for the scripts that read them; info, as kvmtool prints them."""
    _say("# ", text, fresh_line, level="info")
