"""Errors that reach the user as one line."""

import unicodedata

# Unicode categories that end or garble a terminal line: controls (C0,
# C1, DEL, the format characters) and the line and paragraph separators.
UNPRINTABLE = ("Cc", "Cf", "Zl", "Zp")


def one_line(text: str) -> str:
    """text with whatever would break the line (a newline in a guest name
    the user typed, say) spelled as a Python escape."""
    if text.isprintable():
        return text
    return "".join(ascii(c)[1:-1] if unicodedata.category(c) in UNPRINTABLE else c
                   for c in text)


# kvmtool's exit statuses, which its users' scripts test: die() exits with
# 128 (util/util.c), a command line parse_options() refuses with 129
# (util/parse-options.c, as git and perf do).
KVMTOOL_DIE = 128
KVMTOOL_USAGE = 129


class LkvmError(Exception):
    """A problem with the user's input or the host, told in one line: the
    message often quotes the user's input, so it is made one line here.
    The class decides how lkvm ends: `status` is its exit status and
    `prefix` kvmtool's word for it on stderr (die()'s "Fatal:")."""

    status = KVMTOOL_DIE
    prefix = "Fatal: "

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status

    def __str__(self) -> str:
        return one_line(super().__str__())


class UsageError(LkvmError):
    """A command line lkvm cannot read (an unknown or ambiguous option, a
    value that is missing or of the wrong kind): kvmtool's parse_options()
    says it with pr_err() ("Error:") and exits 129."""

    status = KVMTOOL_USAGE
    prefix = "Error: "


class GuestError(Exception):
    """The guest handed us something impossible (an address outside its
    memory, a malformed descriptor).  Devices turn it into an error status
    for the guest; it never ends lkvm by itself."""
