"""When the halt check may park the vCPUs to ask the arch whether the
guest stopped for good.

Asking parks every vCPU, a stop-the-world; doing it twice a second froze
a busy guest for milliseconds and woke an idle one.  KVM's statistics
show without stopping anything what the answer needs first: a guest
halted for good has every vCPU blocked in the kernel and none of them
moving.  So the arch is asked only when every vCPU has stayed blocked,
without an exit or a wakeup, for a whole period between two looks, and
only once per such state: the vCPUs can only leave it by running, which
moves their counters.  A running guest is never parked, an idle one at
most once per idle stretch.  A KVM without the statistics gets the old
check: ask at every look.
"""

from collections.abc import Sequence

from kvm.stats import VcpuStats


class HaltWatch:
    def __init__(self, vcpu_fds: Sequence[int]) -> None:
        self.stats: list[VcpuStats] | None = []
        try:
            for fd in vcpu_fds:
                self.stats.append(VcpuStats(fd))
        except (OSError, KeyError):
            self.close()
            self.stats = None
        self._last: tuple[tuple[int, ...], ...] | None = None
        self._asked: tuple[tuple[int, ...], ...] | None = None

    def worth_asking(self) -> bool:
        """Whether the guest may have halted for good; called once a period."""
        if self.stats is None:
            return True
        samples = [s.sample() for s in self.stats]
        if not all(s.blocking for s in samples):
            self._last = None
            return False
        activity = tuple(s.activity for s in samples)
        settled = activity == self._last and activity != self._asked
        self._last = activity
        if settled:
            self._asked = activity
        return settled

    def close(self) -> None:
        for s in self.stats or ():
            s.close()
