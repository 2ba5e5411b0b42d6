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


# kvmtool's die() exits with this; lkvm's own errors exit with 1.
KVMTOOL_DIE = 128


class LkvmError(Exception):
    """A problem with the user's input or the host, told in one line: the
    message often quotes the user's input, so it is made one line here.
    `status` is lkvm's exit status for it."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status

    def __str__(self) -> str:
        return one_line(super().__str__())


class GuestError(Exception):
    """The guest handed us something impossible (an address outside its
    memory, a malformed descriptor).  Devices turn it into an error status
    for the guest; it never ends lkvm by itself."""
