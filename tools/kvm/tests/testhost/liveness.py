"""Is L1 still alive? Its heartbeat and its console say.

L1's init writes "HB" on the control port every 2 s, whatever its jobs do,
with what L1 has left of its memory (its tmpfs root and the page cache
share it with the guests), which a death's report then gives.
A host that stops beating, or whose kernel reports a CPU stuck (the soft
lockups and RCU stalls seen on every hung session, which never recovered),
is dead: the caller fails at once with the console's last lines instead of
waiting for the job's own limit.
"""

import re
import time
from pathlib import Path

# A silence this long is many missed beats, even on a loaded machine.
LOST_AFTER = 40.0
WATCHDOG = re.compile(rb"watchdog: BUG: soft lockup|rcu: INFO: \S+ (self-)?detected stall")


class Liveness:
    def __init__(self, console: Path, lost_after: float = LOST_AFTER) -> None:
        self._console = console
        self._seen = 0  # bytes of the console already searched
        self._lost_after = lost_after
        self._beat: float | None = None  # no heartbeat before L1's init starts it
        self._state = ""  # what the last beat said of L1

    def beat(self, state: str = "") -> None:
        self._beat = time.monotonic()
        self._state = state

    def why_dead(self) -> str | None:
        """Why L1 counts as dead, or None while it looks alive."""
        if self._beat is not None and time.monotonic() - self._beat > self._lost_after:
            last = f" (its last beat: {self._state})" if self._state else ""
            return f"no heartbeat from L1 for {self._lost_after:.0f} s{last}"
        try:
            with open(self._console, "rb") as f:
                f.seek(self._seen)
                new = f.read()
        except FileNotFoundError:  # not made yet, or on a person's terminal
            return None
        end = new.rfind(b"\n") + 1  # whole lines only: a report may be half written
        self._seen += end
        if WATCHDOG.search(new[:end]):
            return "L1's kernel reports a stuck CPU"
        return None
