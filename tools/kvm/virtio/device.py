"""What every virtio device shares, whatever its transport: feature
negotiation, the status register, reset, queues and config space.

A device subclass names its id, its feature bits, its queues and its
config bytes, and implements `process(index, queue)`.  Transports (PCI,
MMIO) turn register accesses into the calls below and deliver the
interrupts the device asks for through `transport.signal_queue(index)`
and `transport.signal_config()`.
"""

import threading
from typing import Protocol

from include.uapi import lib
from kvm import msg
from kvm.errors import GuestError
from virtio.queue import QueueError, Virtqueue

S_FEATURES_OK = lib.VIRTIO_CONFIG_S_FEATURES_OK
S_NEEDS_RESET = lib.VIRTIO_CONFIG_S_NEEDS_RESET

# Ring features every device here implements.
RING_FEATURES = 1 << lib.VIRTIO_RING_F_INDIRECT_DESC | 1 << lib.VIRTIO_RING_F_EVENT_IDX
VERSION_1 = 1 << lib.VIRTIO_F_VERSION_1
LEGACY_FEATURE_BITS = 0xFFFFFFFF  # a legacy transport has one 32-bit feature word

DEFAULT_QUEUE_SIZE = 256


class Signals(Protocol):
    """What a device asks of its transport: the interrupts."""

    def signal_queue(self, index: int) -> None: ...

    def signal_config(self) -> None: ...

    def queue_irqfd(self, index: int) -> int | None:
        """An irqfd raising queue `index`'s interrupt with no help from
        lkvm (for vhost to signal), or None while there is none."""


class VirtioDevice:
    device_id = 0
    name = "virtio"
    features = 0      # device-specific feature bits offered
    num_queues = 1
    queue_size = DEFAULT_QUEUE_SIZE

    def __init__(self, mem: object) -> None:
        self.mem = mem
        self.queues = [Virtqueue(mem, self.queue_size) for _ in range(self.num_queues)]
        self.lock = threading.RLock()
        self.transport: Signals | None = None
        self.modern = True
        self.config = bytearray()
        self.config_generation = 0
        self.status = 0
        self.driver_features = 0

    # Features and status.
    def offered(self) -> int:
        if self.modern:
            return self.features | RING_FEATURES | VERSION_1
        return (self.features | RING_FEATURES) & LEGACY_FEATURE_BITS

    def set_driver_features(self, value: int) -> None:
        """Take the driver's feature word(s).  A modern driver's choice is
        checked at FEATURES_OK; a legacy one has no such step, so bits we
        did not offer are dropped here."""
        with self.lock:
            if self.modern:
                self.driver_features = value
            else:
                self.driver_features = value & self.offered()
                self._apply_features()

    def set_status(self, value: int) -> None:
        with self.lock:
            if value == 0:
                self.reset()
                return
            new = value & ~self.status
            if new & S_FEATURES_OK:
                if self.driver_features & ~self.offered():
                    value &= ~S_FEATURES_OK  # the driver reads it back and gives up
                else:
                    self._apply_features()
            self.status = value | (self.status & S_NEEDS_RESET)

    def _apply_features(self) -> None:
        for q in self.queues:
            q.event_idx = bool(self.driver_features >> lib.VIRTIO_RING_F_EVENT_IDX & 1)
            q.indirect = bool(self.driver_features >> lib.VIRTIO_RING_F_INDIRECT_DESC & 1)
        self.negotiated(self.driver_features)

    def negotiated(self, features: int) -> None:
        """Hook: the driver settled on `features`."""

    def reset(self) -> None:
        with self.lock:
            self.status = 0
            self.driver_features = 0
            for q in self.queues:
                q.reset()
            self.on_reset()

    def on_reset(self) -> None:
        """Hook: forget per-session device state."""

    def interrupts_moved(self) -> None:
        """Hook: the driver masked, unmasked or moved an interrupt, so
        what transport.queue_irqfd() says may have changed."""

    @property
    def broken(self) -> bool:
        return bool(self.status & S_NEEDS_RESET)

    def fail(self, why: str) -> None:
        """Stop the device until the driver resets it (virtio 1.x §2.1.2)."""
        if not self.broken:
            msg.warning(f"virtio-{self.name}: {why}; device needs reset")
            self.status |= S_NEEDS_RESET
            if self.transport is not None:
                self.transport.signal_config()

    # Queues.
    def enable_queue(self, index: int) -> None:
        with self.lock:
            try:
                self.queues[index].activate()
            except QueueError as e:
                self.fail(str(e))

    def notify(self, index: int) -> None:
        """The driver kicked queue `index`: process it and interrupt if the
        driver wants to know."""
        with self.lock:
            if index >= len(self.queues) or self.broken or not self.queues[index].enabled:
                return
            q = self.queues[index]
            old = q.used_idx
            try:
                self.process(index, q)
            except GuestError as e:
                self.fail(str(e))
            if q.needs_interrupt(old):
                self.transport.signal_queue(index)

    def process(self, index: int, queue: Virtqueue) -> None:
        raise NotImplementedError

    # Device configuration space.
    def read_config(self, offset: int, size: int) -> int:
        if offset < 0 or offset + size > len(self.config):
            return 0
        return int.from_bytes(self.config[offset:offset + size], "little")

    def write_config(self, offset: int, size: int, value: int) -> None:
        """Config space is read-only unless a device says otherwise."""

    def close(self) -> None:
        """Hook: release host resources."""
