"""Telling the user things, the one way lkvm does: a line on stderr,
indented, with kvmtool's prefix for how much it matters (its util.c's
pr_info, pr_warning, pr_err and die)."""

import sys


def _say(prefix: str, text: str, fresh_line: bool = False) -> None:
    # Guest output may have left the cursor mid-line: start a new one.
    print(("\n" if fresh_line else "") + f"  {prefix}{text}", file=sys.stderr)


def info(text: str) -> None:
    _say("Info: ", text)


def warning(text: str) -> None:
    _say("Warning: ", text)


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
    they are for the scripts that read them."""
    _say("# ", text, fresh_line)
