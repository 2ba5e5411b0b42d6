"""What virtio's PCI and MMIO transports share (virtio 1.x §4.1, §4.2):
the feature and queue selectors the driver writes before the register
they pick, the config generation, the interrupt status latch behind a
level-triggered line, and the legacy ring that one page frame number
describes.  Each transport maps its own register layout onto these."""

import threading
from collections.abc import Callable

from virtio.device import VirtioDevice
from virtio.queue import Virtqueue, ring_sizes

FEATURE_WORDS = 2  # 64 feature bits, read and written 32 at a time


class IrqLatch:
    """An interrupt status register over a level-triggered line (MMIO's
    InterruptStatus, legacy PCI's ISR): the line is up while a bit is."""

    def __init__(self, line_set: Callable[[int], None]) -> None:
        self._line_set = line_set
        self._lock = threading.Lock()
        self.bits = 0

    def set(self, bit: int) -> None:
        with self._lock:
            self.bits |= bit
            self._line_set(1)

    def ack(self, bits: int) -> None:
        with self._lock:
            self.bits &= ~bits
            if not self.bits:
                self._line_set(0)

    def take(self) -> int:
        """Read and acknowledge every bit, as reading the PCI ISR does."""
        with self._lock:
            bits, self.bits = self.bits, 0
            self._line_set(0)
        return bits


def _word(value: int, select: int) -> int:
    return value >> 32 * select & 0xFFFFFFFF if select < FEATURE_WORDS else 0


class Transport:
    """The driver-facing state of one device, whatever the transport."""

    def __init__(self, dev: VirtioDevice) -> None:
        self.dev = dev
        self.dfselect = self.gfselect = self.qsel = 0

    def queue(self) -> Virtqueue | None:
        """The queue the driver selected, or None past the last."""
        qs = self.dev.queues
        return qs[self.qsel] if self.qsel < len(qs) else None

    # Features, 32 bits at a time.
    def device_features_word(self) -> int:
        return _word(self.dev.offered(), self.dfselect)

    def driver_features_word(self) -> int:
        return _word(self.dev.driver_features, self.gfselect)

    def write_driver_features_word(self, value: int) -> None:
        dev = self.dev
        if self.gfselect < FEATURE_WORDS:
            mask = 0xFFFFFFFF << 32 * self.gfselect
            dev.set_driver_features(dev.driver_features & ~mask | value << 32 * self.gfselect)
        elif value:
            # A word past ours names features we never offered: remember
            # that with a bit that makes FEATURES_OK fail.
            dev.set_driver_features(dev.driver_features | 1 << 32 * FEATURE_WORDS)

    def config_changed(self) -> None:
        """The device's config changed: a driver reading it sees a new
        generation, before the interrupt the transport then raises."""
        self.dev.config_generation = (self.dev.config_generation + 1) & 0xFF

    # The legacy ring: one block at a page frame.
    def set_legacy_ring(self, q: Virtqueue, base: int, align: int) -> None:
        """Descriptors at `base`, then the available ring, then the used
        ring on the next `align`; base 0 stops the queue.  The queue keeps
        the size and MSI-X vector the driver set before."""
        size, vector = q.size, q.vector
        q.reset()
        q.size, q.vector = size, vector
        if not base:
            return
        if align <= 0 or align & (align - 1):
            self.dev.fail(f"queue alignment {align} is not a power of two")
            return
        self.dev.set_driver_features(self.dev.driver_features)  # ring features to the queue
        desc, avail, _ = ring_sizes(q.size)
        q.desc_addr, q.avail_addr = base, base + desc
        q.used_addr = -(-(base + desc + avail) // align) * align
        self.dev.enable_queue(self.qsel)
