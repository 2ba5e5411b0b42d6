"""Errors that reach the user as one line."""


class LkvmError(Exception):
    """A problem with the user's input or the host, told in one line."""


class GuestError(Exception):
    """The guest handed us something impossible (an address outside its
    memory, a malformed descriptor).  Devices turn it into an error status
    for the guest; it never ends lkvm by itself."""
