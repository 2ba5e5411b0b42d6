"""The split virtqueue and device status through the mock driver: chains
as Linux builds them, feature negotiation, reset, event index, and the
ring rules a broken driver can break."""

import pytest

from include.uapi import lib
from virtio.device import S_FEATURES_OK, S_NEEDS_RESET
from virtio.mock import F_INDIRECT, F_NEXT, F_WRITE, HOLE, LOW_RAM, Driver, mock_memory
from virtio.rng import Rng


@pytest.fixture
def rng():
    mem = mock_memory()
    dev = Rng(mem)
    yield dev
    dev.close()


def test_direct_and_indirect_chains_come_back_filled(rng):
    (q,) = Driver(rng).start()
    heads = [q.add([], [16, 48]), q.add([], [64], indirect=True)]
    q.kick()
    done = q.collect()
    assert [h for h, _, _ in done] == heads
    assert [n for _, n, _ in done] == [64, 64]
    assert all(any(data) for _, _, data in done)


def test_features_outside_the_offer_fail_features_ok(rng):
    d = Driver(rng)
    assert not d.negotiate(rng.offered() | 1 << 40)
    assert not rng.status & S_FEATURES_OK
    assert d.negotiate(1 << lib.VIRTIO_F_VERSION_1)


def test_legacy_drops_unknown_bits_and_has_no_version_1(rng):
    rng.modern = False
    assert not rng.offered() >> lib.VIRTIO_F_VERSION_1 & 1
    rng.set_driver_features(0xFFFFFFFF)
    assert rng.driver_features == rng.offered()


def test_reset_clears_status_and_queues(rng):
    d = Driver(rng)
    d.start()
    rng.set_status(0)
    assert rng.status == 0 and not rng.queues[0].enabled


def test_event_index_suppresses_and_requests_interrupts(rng):
    d = Driver(rng)
    (q,) = d.start()
    q.set_used_event(5)  # "interrupt me once entry 5 is used"
    for _ in range(3):
        q.add([], [8])
    q.kick()
    assert d.transport.queue_irqs[0] == 0
    for _ in range(3):
        q.add([], [8])
    q.kick()
    assert d.transport.queue_irqs[0] == 1
    assert len(q.collect()) == 6


def test_no_interrupt_flag_without_event_index(rng):
    d = Driver(rng)
    (q,) = d.start(1 << lib.VIRTIO_F_VERSION_1)
    d.mem.write(q.avail, lib.VRING_AVAIL_F_NO_INTERRUPT.to_bytes(2, "little"))
    q.add([], [8])
    q.kick()
    assert d.transport.queue_irqs[0] == 0 and len(q.collect()) == 1


def broken(dev) -> bool:
    return bool(dev.status & S_NEEDS_RESET)


@pytest.mark.parametrize("desc", [
    (HOLE[0] + 4096, 16, F_WRITE, 0),              # buffer in the hole between RAM
    (LOW_RAM - 8, 16, F_WRITE, 0),                 # runs off the end of RAM
    (2**64 - 8, 16, F_WRITE, 0),                   # wraps the address space
    (0x1000, 0xFFFFFFFF, F_WRITE, 0),              # length past RAM
    (0x1000, 8, F_WRITE | F_NEXT, 0),              # loops onto itself
    (0x1000, 8, F_WRITE | F_NEXT, 999),            # next past the table
    (0x1000, 15, F_INDIRECT, 0),                   # indirect table not in descriptors
    (0x1000, 16, F_INDIRECT | F_NEXT, 1),          # indirect and next together
])
def test_hostile_descriptors_stop_the_device(rng, desc):
    d = Driver(rng)
    (q,) = d.start()
    q.write_desc(0, *desc)
    q.publish(0)
    q.kick()
    assert broken(rng)
    assert d.transport.config_irqs == 1
    q.add([], [8])
    q.kick()
    assert q.used_idx() == 0  # stopped until reset
    (q,) = d.start()
    q.add([], [8])
    q.kick()
    assert len(q.collect()) == 1


def test_indirect_inside_indirect_is_refused(rng):
    d = Driver(rng)
    (q,) = d.start()
    inner = d.alloc(16, 16)
    outer = d.alloc(16, 16)
    q.write_desc(0, 0x2000, 8, F_WRITE, 0, table=inner)
    q.write_desc(0, inner, 16, F_INDIRECT, 0, table=outer)
    q.write_desc(0, outer, 16, F_INDIRECT, 0)
    q.publish(0)
    q.kick()
    assert broken(rng)


def test_indirect_without_negotiation_is_refused(rng):
    d = Driver(rng)
    (q,) = d.start(1 << lib.VIRTIO_F_VERSION_1)
    q.add([], [8], indirect=True)
    q.kick()
    assert broken(rng)


def test_readable_after_writable_is_refused(rng):
    d = Driver(rng)
    (q,) = d.start()
    q.write_desc(0, 0x2000, 8, F_WRITE | F_NEXT, 1)
    q.write_desc(1, 0x3000, 8, 0, 0)
    q.publish(0)
    q.kick()
    assert broken(rng)


def test_available_index_running_ahead_is_refused(rng):
    d = Driver(rng)
    (q,) = d.start()
    d.mem.write(q.avail + 2, (q.size + 1).to_bytes(2, "little"))
    q.kick()
    assert broken(rng)


@pytest.mark.parametrize("size", [0, 3, 100, 512, 65535])
def test_queue_sizes_that_are_not_powers_of_two_up_to_the_max(rng, size):
    d = Driver(rng)
    d.negotiate()
    rng.queues[0].size = size
    rng.enable_queue(0)
    assert broken(rng) and not rng.queues[0].enabled


@pytest.mark.parametrize("where", ["desc_addr", "avail_addr", "used_addr"])
@pytest.mark.parametrize("addr", [HOLE[0], 2**64 - 16, LOW_RAM - 16, 0x1001])
def test_rings_outside_ram_or_unaligned(rng, where, addr):
    d = Driver(rng)
    d.negotiate()
    q = rng.queues[0]
    q.desc_addr, q.avail_addr, q.used_addr = 0x10000, 0x20000, 0x30000
    setattr(q, where, addr)
    rng.enable_queue(0)
    assert broken(rng)


def test_a_chain_carries_the_sizes_of_its_buffers(rng):
    (q,) = Driver(rng).start()
    q.add([b"abc", b"de"], [16, 48], indirect=True)
    q.add([b""], [0, 7])
    sizes = []
    while (chain := rng.queues[0].pop()) is not None:
        sizes.append((chain.readable_size, chain.writable_size))
    assert sizes == [(5, 64), (0, 7)]
