"""virtio-net's offloads, control queue and queue pairs through the mock
driver: what is offered over which back end, headers passed through or
refused, each control command well-formed and hostile (bad class or
command, short and long data, a MAC table whose counts lie, too many
pairs), and frames on the pairs the guest turned on."""

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from include.uapi import lib
from net.backend import LinkDown
from net.features import GUEST_OFFLOADS, HOST_OFFLOADS, STATUS_OFFSET, bit
from tests.test_virtio_net import MAC, FakeBackend
from virtio.mock import Driver, mock_memory
from virtio.net import HDR, HDR_MRG, Net

OK, ERR = lib.VIRTIO_NET_OK, lib.VIRTIO_NET_ERR
OFFLOADS = HOST_OFFLOADS | GUEST_OFFLOADS
FRAME = bytes(range(64))
CSUM_HDR = HDR.pack(lib.VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, 34, 16)
TSO4_HDR = HDR.pack(lib.VIRTIO_NET_HDR_F_NEEDS_CSUM, lib.VIRTIO_NET_HDR_GSO_TCPV4, 54, 1448,
                    34, 16)


class OffloadBackend(FakeBackend):
    offloads = OFFLOADS

    def __init__(self) -> None:
        super().__init__()
        self.guest_offloads = -1
        self.enabled = None


def net_for(backends, features=None):
    dev = Net(mock_memory(), backends, MAC)
    drv = Driver(dev)
    return dev, drv, drv.start(features)


def mrg(hdr: bytes, num_buffers: int = 0) -> bytes:
    return hdr + num_buffers.to_bytes(2, "little")


# Offloads.
class GoneTap(OffloadBackend):
    """A tap that is deleted under lkvm: from then on it refuses every
    setting."""
    gone = False

    def set_offloads(self, offloads: int) -> None:
        if self.gone:
            raise LinkDown("tap lkvm0 is gone")
        super().set_offloads(offloads)


def test_a_back_end_refusing_the_drivers_settings_takes_the_link_down(capsys):
    """The driver's feature negotiation, on its vCPU, tells the back end
    the offloads it took; a tap gone meanwhile ends the link, with one
    warning, and not lkvm."""
    tap = GoneTap()
    dev = Net(mock_memory(), [tap], MAC)
    drv = Driver(dev)
    tap.gone = True
    drv.start()
    assert dev.read_config(6, 2) & lib.VIRTIO_NET_S_LINK_UP == 0
    assert capsys.readouterr().err.count("tap lkvm0 is gone; the guest's link is down") == 1


def test_offloads_are_offered_only_over_a_back_end_that_takes_them():
    plain = Net(mock_memory(), [FakeBackend()], MAC).offered()
    tap = Net(mock_memory(), [OffloadBackend()], MAC).offered()
    assert not plain & (OFFLOADS | bit("CTRL_GUEST_OFFLOADS") | bit("MQ"))
    assert tap & OFFLOADS == OFFLOADS and tap & bit("CTRL_GUEST_OFFLOADS")
    assert plain & bit("CTRL_VQ") and plain & bit("CTRL_RX")


def test_the_guests_receive_offloads_reach_the_back_end_and_go_at_reset():
    be = OffloadBackend()
    dev, drv, _ = net_for([be])
    assert be.guest_offloads == GUEST_OFFLOADS
    dev.reset()
    assert be.guest_offloads == 0
    # GUEST_TSO4 without GUEST_CSUM is not usable (virtio 1.x §5.1.3.1).
    net_for([be], dev.offered() & ~bit("GUEST_CSUM"))
    assert be.guest_offloads == 0


def test_a_partial_checksum_and_a_segment_pass_with_their_header():
    be = OffloadBackend()
    dev, _, (rx, tx, ctrl) = net_for([be])
    tx.add([mrg(CSUM_HDR) + FRAME], [])
    tx.add([mrg(TSO4_HDR), FRAME], [])
    tx.kick()
    assert be.sent == [CSUM_HDR + FRAME, TSO4_HDR + FRAME] and dev.dropped == 0


@pytest.mark.parametrize("hdr,without", [
    (CSUM_HDR, bit("CSUM")),
    (TSO4_HDR, bit("HOST_TSO4")),
    (TSO4_HDR, bit("CSUM")),            # TSO4 is not usable without CSUM
    (HDR.pack(1, lib.VIRTIO_NET_HDR_GSO_TCPV4 | lib.VIRTIO_NET_HDR_GSO_ECN, 54, 1448, 34, 16),
     bit("HOST_ECN")),
    (HDR.pack(1, lib.VIRTIO_NET_HDR_GSO_UDP, 42, 1472, 34, 6), 0),     # UFO: never offered
    (HDR.pack(0, lib.VIRTIO_NET_HDR_GSO_ECN, 0, 0, 0, 0), 0),         # ECN with no segment
    (HDR.pack(lib.VIRTIO_NET_HDR_F_DATA_VALID, 0, 0, 0, 0, 0), 0),    # a receive-only flag
    (HDR.pack(0, 7, 0, 0, 0, 0), 0),                                  # no such gso_type
])
def test_a_header_asking_for_what_was_not_negotiated_is_dropped(hdr, without):
    be = OffloadBackend()
    dev, drv, (rx, tx, ctrl) = net_for([be], Net(mock_memory(), [be], MAC).offered() & ~without)
    tx.add([mrg(hdr) + FRAME], [])
    tx.add([mrg(bytes(10)) + FRAME], [])
    tx.kick()
    assert be.sent == [bytes(10) + FRAME] and dev.dropped == 1 and not dev.broken


def test_plain_back_ends_still_refuse_every_offload():
    be = FakeBackend()
    dev, _, (rx, tx, ctrl) = net_for([be])
    tx.add([mrg(CSUM_HDR) + FRAME], [])
    tx.kick()
    assert be.sent == [] and dev.dropped == 1


@pytest.mark.parametrize("flags,gso,without,kept", [
    (lib.VIRTIO_NET_HDR_F_NEEDS_CSUM, lib.VIRTIO_NET_HDR_GSO_TCPV4, 0, True),
    (lib.VIRTIO_NET_HDR_F_DATA_VALID, 0, 0, True),
    (lib.VIRTIO_NET_HDR_F_DATA_VALID, 0, GUEST_OFFLOADS, "cleared"),
    (lib.VIRTIO_NET_HDR_F_NEEDS_CSUM, lib.VIRTIO_NET_HDR_GSO_TCPV4, bit("GUEST_TSO4"), False),
    (lib.VIRTIO_NET_HDR_F_NEEDS_CSUM, lib.VIRTIO_NET_HDR_GSO_TCPV6, bit("GUEST_TSO6"), False),
    (lib.VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, GUEST_OFFLOADS, False),
    (0, lib.VIRTIO_NET_HDR_GSO_UDP, 0, False),
])
def test_received_headers_keep_only_the_offloads_the_guest_took(flags, gso, without, kept):
    be = OffloadBackend()
    dev, _, (rx, tx, ctrl) = net_for([be], Net(mock_memory(), [be], MAC).offered() & ~without)
    rx.add([], [4096])
    be.inbox.append(HDR.pack(flags, gso, 54, 1448, 34, 16) + FRAME)
    dev.receive()
    used = rx.collect()
    if not kept:
        assert used == [] and dev.dropped == 1
        return
    ((_, written, data),) = used
    want = HDR_MRG.pack(0 if kept == "cleared" else flags, gso, 54, 1448, 34, 16, 1)
    assert data[:written] == want + FRAME


def test_a_received_frame_too_short_for_its_header_is_dropped():
    be = OffloadBackend()
    dev, _, (rx, tx, ctrl) = net_for([be])
    rx.add([], [4096])
    be.inbox.append(bytes(10))
    dev.receive()
    assert rx.collect() == [] and dev.dropped == 1


# The control queue.
def command(ctrl, cls: int, cmd: int, data: bytes = b"", split: bool = False) -> int:
    out = [bytes([cls, cmd])] + ([data] if data else []) if split else \
        [bytes([cls, cmd]) + data]
    ctrl.add(out, [1])
    ctrl.kick()
    ((_, written, ack),) = ctrl.collect()
    assert written == 1
    return ack[0]


def table(*macs: bytes) -> bytes:
    return struct.pack("<I", len(macs)) + b"".join(macs)


MULTICAST = bytes.fromhex("333300000001")


@pytest.mark.parametrize("cls,cmd,data,split,answer", [
    (lib.VIRTIO_NET_CTRL_RX, lib.VIRTIO_NET_CTRL_RX_PROMISC, b"\1", False, OK),
    (lib.VIRTIO_NET_CTRL_RX, lib.VIRTIO_NET_CTRL_RX_ALLMULTI, b"\0", True, OK),
    (lib.VIRTIO_NET_CTRL_RX, lib.VIRTIO_NET_CTRL_RX_PROMISC, b"\2", False, ERR),
    (lib.VIRTIO_NET_CTRL_RX, lib.VIRTIO_NET_CTRL_RX_PROMISC, b"", False, ERR),       # short
    (lib.VIRTIO_NET_CTRL_RX, lib.VIRTIO_NET_CTRL_RX_PROMISC, b"\1\1", False, ERR),   # long
    (lib.VIRTIO_NET_CTRL_RX, lib.VIRTIO_NET_CTRL_RX_NOBCAST, b"\1", False, ERR),  # not offered
    (lib.VIRTIO_NET_CTRL_MAC, lib.VIRTIO_NET_CTRL_MAC_TABLE_SET, table() + table(MULTICAST),
     True, OK),
    (lib.VIRTIO_NET_CTRL_MAC, lib.VIRTIO_NET_CTRL_MAC_TABLE_SET, table(MAC) + table(), False,
     OK),
    (lib.VIRTIO_NET_CTRL_MAC, lib.VIRTIO_NET_CTRL_MAC_TABLE_SET, table(), False, ERR),
    (lib.VIRTIO_NET_CTRL_MAC, lib.VIRTIO_NET_CTRL_MAC_TABLE_SET,
     struct.pack("<I", 0xFFFFFFFF) + MAC + table(), False, ERR),     # a count that lies
    (lib.VIRTIO_NET_CTRL_MAC, lib.VIRTIO_NET_CTRL_MAC_TABLE_SET, table() + table() + b"x",
     False, ERR),
    (lib.VIRTIO_NET_CTRL_ANNOUNCE, lib.VIRTIO_NET_CTRL_ANNOUNCE_ACK, b"", False, OK),
    (lib.VIRTIO_NET_CTRL_ANNOUNCE, lib.VIRTIO_NET_CTRL_ANNOUNCE_ACK, b"\0", False, ERR),
    (lib.VIRTIO_NET_CTRL_MQ, lib.VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, b"\1\0", False, ERR),  # no MQ
    (lib.VIRTIO_NET_CTRL_GUEST_OFFLOADS, lib.VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET, bytes(8),
     False, ERR),                                   # not offered over a plain back end
    (lib.VIRTIO_NET_CTRL_VLAN, lib.VIRTIO_NET_CTRL_VLAN_ADD, b"\1\0", False, ERR),
    (0xFF, 0, b"", False, ERR),
    (lib.VIRTIO_NET_CTRL_RX, 0xFF, b"\1", False, ERR),
])
def test_control_commands_are_answered(cls, cmd, data, split, answer):
    dev, _, (rx, tx, ctrl) = net_for([FakeBackend()])
    assert command(ctrl, cls, cmd, data, split) == answer
    assert not dev.broken


def test_a_request_shorter_than_its_header_gets_an_error():
    dev, _, (rx, tx, ctrl) = net_for([FakeBackend()])
    ctrl.add([b"\0"], [1])
    ctrl.add([], [1])
    ctrl.kick()
    assert [(w, a) for _, w, a in ctrl.collect()] == [(1, bytes([ERR]))] * 2


def test_a_request_with_nowhere_to_answer_is_given_back_untouched():
    dev, _, (rx, tx, ctrl) = net_for([FakeBackend()])
    ctrl.add([bytes([lib.VIRTIO_NET_CTRL_RX, lib.VIRTIO_NET_CTRL_RX_PROMISC, 1])], [])
    ctrl.kick()
    assert [w for _, w, _ in ctrl.collect()] == [0] and not dev.broken


def test_a_huge_mac_table_is_not_copied():
    """A count that says 4 billion entries over one buffer that spans all
    of RAM many times: checked by length, never read into memory."""
    dev, drv, (rx, tx, ctrl) = net_for([FakeBackend()])
    head, nxt, ack = ctrl.free.pop(), ctrl.free.pop(), ctrl.free.pop()
    hdr = drv.alloc_data(bytes([lib.VIRTIO_NET_CTRL_MAC, lib.VIRTIO_NET_CTRL_MAC_TABLE_SET]) +
                         struct.pack("<I", 0x7FFFFFFF))
    ctrl.write_desc(head, hdr, 6, 1, nxt)                       # F_NEXT
    ctrl.write_desc(nxt, 0, 15 << 20, 1, ack)
    ctrl.write_desc(ack, answer := drv.alloc(1), 1, 2, 0)       # F_WRITE
    ctrl.publish(head)
    ctrl.kick()
    assert ctrl.used_idx() == 1 and not dev.broken
    assert drv.mem.read(answer, 1) == bytes([ERR])


def test_a_new_mac_lands_in_config_space():
    dev, _, (rx, tx, ctrl) = net_for([FakeBackend()])
    new = bytes.fromhex("020000abcdef")
    assert command(ctrl, lib.VIRTIO_NET_CTRL_MAC, lib.VIRTIO_NET_CTRL_MAC_ADDR_SET, new) == OK
    assert bytes(dev.config[:6]) == new
    assert command(ctrl, lib.VIRTIO_NET_CTRL_MAC, lib.VIRTIO_NET_CTRL_MAC_ADDR_SET, new[:5]) \
        == ERR


def test_the_announce_ack_clears_the_announce_bit():
    dev, _, (rx, tx, ctrl) = net_for([FakeBackend()])
    dev.config[STATUS_OFFSET] |= lib.VIRTIO_NET_S_ANNOUNCE
    assert command(ctrl, lib.VIRTIO_NET_CTRL_ANNOUNCE, lib.VIRTIO_NET_CTRL_ANNOUNCE_ACK) == OK
    assert dev.config[STATUS_OFFSET] == lib.VIRTIO_NET_S_LINK_UP


def test_without_ctrl_vq_the_control_queue_is_not_served():
    dev, _, (rx, tx, ctrl) = net_for([FakeBackend()], Net(mock_memory(), [FakeBackend()],
                                                          MAC).offered() & ~bit("CTRL_VQ"))
    ctrl.add([bytes([lib.VIRTIO_NET_CTRL_RX, 0, 1])], [1])
    ctrl.kick()
    assert ctrl.collect() == []


def test_the_guest_offloads_command_changes_what_the_back_end_hands_over():
    be = OffloadBackend()
    dev, _, (rx, tx, ctrl) = net_for([be])
    set_offloads = (lib.VIRTIO_NET_CTRL_GUEST_OFFLOADS, lib.VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET)
    assert command(ctrl, *set_offloads, struct.pack("<Q", bit("GUEST_CSUM"))) == OK
    assert be.guest_offloads == bit("GUEST_CSUM")
    for bad in (bit("GUEST_TSO4"),                  # without the checksum it needs
                bit("CSUM"),                        # not a receive offload
                1 << 63):
        assert command(ctrl, *set_offloads, struct.pack("<Q", bad)) == ERR
    assert command(ctrl, *set_offloads, b"\0" * 4) == ERR
    assert be.guest_offloads == bit("GUEST_CSUM")


CLASSES = [lib.VIRTIO_NET_CTRL_RX, lib.VIRTIO_NET_CTRL_MAC, lib.VIRTIO_NET_CTRL_VLAN,
           lib.VIRTIO_NET_CTRL_ANNOUNCE, lib.VIRTIO_NET_CTRL_MQ,
           lib.VIRTIO_NET_CTRL_GUEST_OFFLOADS]


@settings(deadline=None, database=None, max_examples=3000,
          suppress_health_check=list(HealthCheck))
@given(st.sampled_from(CLASSES) | st.integers(0, 255), st.integers(0, 7) | st.integers(0, 255),
       st.binary(max_size=48), st.lists(st.integers(0, 48), max_size=3),
       st.lists(st.integers(0, 3), max_size=3))
def test_any_control_request_is_answered_and_breaks_nothing(cls, cmd, data, cuts, ins):
    """Well-formed or not, split anywhere, with any device-writable tail:
    answered OK or ERR in its first writable byte (or given back with
    nothing written when it has none), and the device stays sane."""
    bes = [OffloadBackend(), OffloadBackend()]
    dev, _, (rx0, tx0, rx1, tx1, ctrl) = net_for(bes)
    raw = bytes([cls, cmd]) + data
    cuts = sorted(cuts)
    out = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True) if b > a]
    ctrl.add(out, ins)
    ctrl.kick()
    ((_, written, answer),) = ctrl.collect()
    assert not dev.broken
    if any(ins):
        assert written == 1 and answer[0] in (OK, ERR)    # in the first writable byte
    else:
        assert written == 0
    assert 1 <= dev.pairs <= 2 and bes[0].guest_offloads & ~GUEST_OFFLOADS == 0


# Queue pairs.
def pairs_set(ctrl, n: int) -> int:
    return command(ctrl, lib.VIRTIO_NET_CTRL_MQ, lib.VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
                   struct.pack("<H", n))


def test_multiqueue_config_and_the_control_queue_after_the_pairs():
    bes = [OffloadBackend() for _ in range(3)]
    dev = Net(mock_memory(), bes, MAC)
    assert len(dev.queues) == 7 and dev.offered() & bit("MQ")
    assert dev.read_config(8, 2) == 3          # max_virtqueue_pairs
    assert [b.enabled for b in bes] == [None, False, False]
    drv = Driver(dev)
    qs = drv.start()
    assert pairs_set(qs[6], 3) == OK
    assert [b.enabled for b in bes] == [None, True, True]
    for bad in (0, 4, 0xFFFF):
        assert pairs_set(qs[6], bad) == ERR
    assert pairs_set(qs[6], 2) == OK
    assert [b.enabled for b in bes] == [None, True, False]


def test_without_mq_the_control_queue_follows_the_first_pair():
    bes = [OffloadBackend() for _ in range(2)]
    dev = Net(mock_memory(), bes, MAC)
    drv = Driver(dev)
    qs = drv.start(dev.offered() & ~bit("MQ"))
    assert command(qs[2], lib.VIRTIO_NET_CTRL_RX, lib.VIRTIO_NET_CTRL_RX_PROMISC, b"\1") == OK
    assert pairs_set(qs[2], 2) == ERR


def test_frames_travel_on_the_pairs_in_use_only():
    bes = [OffloadBackend() for _ in range(2)]
    dev, drv, (rx0, tx0, rx1, tx1, ctrl) = net_for(bes)
    frame = mrg(bytes(10)) + FRAME
    tx1.add([frame], [])
    tx1.kick()
    assert bes[1].sent == [] and tx1.collect() == []        # pair 1 not in use yet
    assert pairs_set(ctrl, 2) == OK
    tx1.kick()
    assert bes[1].sent == [bytes(10) + FRAME] and bes[0].sent == []
    rx1.add([], [4096])
    bes[1].inbox.append(bytes(10) + FRAME)
    dev.receive(1)
    ((_, written, data),) = rx1.collect()
    assert data[:written] == mrg(bytes(10), 1) + FRAME and drv.transport.queue_irqs[2] == 1
    # Back to one pair: what waited for pair 1 is dropped with its queue.
    bes[1].inbox.append(bytes(10) + FRAME)
    dev.receive(1)
    assert pairs_set(ctrl, 1) == OK and not dev.pending[1]
