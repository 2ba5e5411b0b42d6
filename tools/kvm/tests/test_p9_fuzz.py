"""Property-based fuzzing of the 9p server through handle().

Whatever bytes arrive, the reply must be one well-formed R-message no
larger than msize, with the request's tag when it had one, the server
must hit no internal error, the sentinel beside the share must stay as
it was and its secret must never appear in a reply.  The tree offers
symlinks out of the share (absolute and relative) to tempt every walk.
"""

import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import record_fuzz_cases
from tests.p9share import SECRET, Share
from virtio.p9 import wire
from virtio.p9.client import Client, parse
from virtio.p9.wire import HEADER, LAYOUTS, NOFID, NOTAG, Msg, message, pack, unpack

FUZZ = settings(deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SLOW_CASES = 100_000  # per message type, under --slow
SESSION = 200           # cases per session: a new one clears fids, remakes the tree

NAMES = [b"", b".", b"..", b"/", b"../outside", b"/etc/passwd", b"abs", b"rel",
         b"file", b"dir", b"abs_secret", b"outside", b"secret", b"a\0b", b"a/b",
         b"new", b"x" * 300]
FLAGS = [NOFID, 0x7FFFFFFF, 0x80000000, 4096, 0o102, 0o1102, 0o200000, 0x200,
         0x1FF, 0x0C000, 0x2000 | 0o644, 0x6000 | 0o644, 0x1000 | 0o644]
BIG = [2**63 - 1, 2**63, 2**64 - 1, 10**9, 2**32]

names = st.one_of(st.sampled_from(NAMES), st.binary(max_size=24))
FIELDS = {
    "b": st.integers(0, 255),
    "w": st.integers(0, 0xFFFF),
    "d": st.one_of(st.integers(0, 9), st.sampled_from(FLAGS), st.integers(0, 2**32 - 1)),
    "q": st.one_of(st.integers(0, 100), st.sampled_from(BIG), st.integers(0, 2**64 - 1)),
    "s": names,
    "S": st.lists(names, max_size=18),
    "D": st.binary(max_size=64),
}

# The same values for the seeded generator, which is far cheaper per case
# than hypothesis' own drawing and so carries most of the volume.
RANDOM = {
    "b": lambda r: r.randrange(256),
    "w": lambda r: r.randrange(0x10000),
    "d": lambda r: r.choice((r.randrange(10), r.choice(FLAGS), r.getrandbits(32))),
    "q": lambda r: r.choice((r.randrange(101), r.choice(BIG), r.getrandbits(64))),
    "s": lambda r: r.choice(NAMES) if r.random() < 0.7 else r.randbytes(r.randrange(25)),
    "S": lambda r: [RANDOM["s"](r) for _ in range(r.randrange(19))],
    "D": lambda r: r.randbytes(r.randrange(65)),
}


def seeded_request(r: random.Random, mtype: int | None = None) -> bytes:
    """A request of `mtype` (any type if None), its fields drawn from r,
    and sometimes a few bytes changed."""
    mtype = r.choice(sorted(LAYOUTS)) if mtype is None else mtype
    layout = LAYOUTS[mtype][0]
    msg = bytearray(message(mtype, r.randrange(0x10000),
                            pack(layout, *(RANDOM[c](r) for c in layout))))
    for _ in range(r.choice((0, 0, 1, 2, 3))):
        pos = r.randrange(len(msg) + 1)
        msg[pos:pos + r.randrange(2)] = r.randbytes(r.randrange(2))
    if r.random() < 0.5:
        msg[:4] = struct.pack("<I", len(msg))
    return bytes(msg)


# Strategies are built once: building them per draw costs more than the test.
TYPES = st.sampled_from(sorted(LAYOUTS))
EDITS = st.lists(st.tuples(st.sampled_from("rdit"), st.integers(0, 300), FIELDS["b"]),
                 max_size=3)


@st.composite
def requests(draw) -> bytes:
    """A message whose fields are laid out right but hold anything."""
    mtype = draw(TYPES)
    fields = [draw(FIELDS[c]) for c in LAYOUTS[mtype][0]]
    return message(mtype, draw(FIELDS["w"]), pack(LAYOUTS[mtype][0], *fields))


@st.composite
def mutated(draw) -> bytes:
    """A well-laid-out message with bytes flipped, cut, added or retyped."""
    msg = bytearray(draw(requests()))
    for op, pos, byte in draw(EDITS):
        pos %= len(msg) + 1
        if op == "r" and pos < len(msg):
            msg[pos] = byte
        elif op == "d":
            del msg[pos:pos + 1]
        elif op == "i":
            msg.insert(pos, byte)
        else:
            del msg[pos:]
    if draw(st.booleans()) and len(msg) >= HEADER.size:
        msg[:4] = struct.pack("<I", len(msg))    # get past the size check
    return bytes(msg)


@pytest.fixture(scope="module")
def share(tmp_path_factory):
    s = Share(tmp_path_factory.mktemp("p9fuzz"))
    yield s
    s.check()
    s.close()


def _setup() -> list[bytes]:
    """The requests that open a session with fids 0-7 on the interesting objects."""
    c = Client(lambda m: m)
    msgs = [c.message(Msg.TVERSION, 8192, b"9P2000.L"),
            c.message(Msg.TATTACH, 0, NOFID, b"", b"", 0)]
    for fid, name in ((1, b"dir"), (2, b"file"), (3, b"abs"), (4, b"rel"),
                      (5, b"file"), (6, b"dir"), (7, b"abs_secret")):
        msgs.append(c.message(Msg.TWALK, 0, fid, [name]))
    return msgs + [c.message(Msg.TLOPEN, 5, 2), c.message(Msg.TLOPEN, 6, 0o200000)]


SETUP = _setup()


def fresh_session(share) -> None:
    share.populate()            # the last example may have changed the tree
    for m in SETUP:
        assert parse(share.server.handle(m))[0] == m[4] + 1


def exchange(share, request: bytes) -> None:
    reply = share.server.handle(request)
    rtype, tag, _ = parse(reply)
    assert len(reply) <= max(share.server.msize, 4096)
    if len(request) >= HEADER.size:
        mtype, rtag = struct.unpack_from("<BH", request, 4)
        assert tag == rtag
        assert rtype in (Msg.RLERROR, mtype + 1)
    else:
        assert (rtype, tag) == (Msg.RLERROR, NOTAG)
    assert SECRET not in reply


@settings(FUZZ, max_examples=2000)
@given(request=st.binary(max_size=96))
def test_random_bytes(share, request):
    fresh_session(share)
    exchange(share, request)
    exchange(share, bytes(request[:3]) + b"\0" + request[4:])   # with a plausible size
    share.check()


@settings(FUZZ, max_examples=1000)
@given(batch=st.lists(requests(), min_size=1, max_size=3))
def test_well_laid_out_requests(share, batch):
    fresh_session(share)
    for request in batch:
        exchange(share, request)
    share.check()


@settings(FUZZ, max_examples=500)
@given(batch=st.lists(mutated(), min_size=1, max_size=2))
def test_mutated_requests(share, batch):
    fresh_session(share)
    for request in batch:
        exchange(share, request)
    share.check()


@settings(FUZZ, max_examples=6000)
@given(seed=st.integers(0, 2**64 - 1))
def test_seeded_requests(share, seed):
    r = random.Random(seed)
    fresh_session(share)
    for _ in range(r.randrange(1, 5)):
        exchange(share, seeded_request(r))
    share.check()


@settings(FUZZ, max_examples=1000)
@given(path=st.lists(names, max_size=16))
def test_walks_stay_inside(share, path):
    fresh_session(share)
    c = Client(share.server.handle)
    c.msize = 8192
    try:
        qids = c.walk(0, 9, *path)
    except OSError:
        return
    if len(qids) == len(path):
        ino = share.inodes_outside()
        assert all(q[2] not in ino for q in qids)
    share.check()


@pytest.mark.slow
@pytest.mark.parametrize("mtype", sorted(LAYOUTS), ids=lambda t: Msg(t).name)
def test_every_message_type(request, share, mtype):
    """SLOW_CASES seeded requests of one type, against sessions holding
    fids on every kind of object; the tree outside stays untouched."""
    r = random.Random(mtype)
    for n in range(SLOW_CASES):
        if n % SESSION == 0:
            share.check()
            fresh_session(share)
        exchange(share, seeded_request(r, mtype))
    share.check()
    record_fuzz_cases(request.config, f"9p {Msg(mtype).name}", SLOW_CASES)


# The compiled codecs the server uses against the generic pack/unpack.
QIDS = st.tuples(FIELDS["b"], st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1))
REPLY_FIELDS = {**FIELDS, "Q": QIDS, "A": st.lists(QIDS, max_size=16)}
LAYOUT_PAIRS = sorted({(mtype, layout) for mtype, pair in LAYOUTS.items() for layout in pair})


def decoded(layout: str, msg: bytes) -> tuple[list | int, list | int]:
    """What decoder() and unpack() make of msg: fields or an errno, each."""
    def outcome(decode) -> list | int:
        try:
            return list(decode(msg))
        except wire.ProtocolError as e:
            return e.errno
    return outcome(wire.decoder(layout)), outcome(lambda m: unpack(layout, m[HEADER.size:]))


@settings(FUZZ, max_examples=1000)
@given(pair=st.sampled_from(LAYOUT_PAIRS), tag=FIELDS["w"], data=st.data())
def test_codecs_agree_with_pack(pair, tag, data):
    mtype, layout = pair
    fields = [data.draw(REPLY_FIELDS[c]) for c in layout]
    msg = message(mtype, tag, pack(layout, *fields))
    assert wire.encoder(layout)(mtype, tag, tuple(fields)) == msg
    if "Q" not in layout:               # no request carries a qid
        got, want = decoded(layout, msg)
        assert got == want


@settings(FUZZ, max_examples=1000)
@given(pair=st.sampled_from(LAYOUT_PAIRS), msg=st.binary(min_size=HEADER.size, max_size=80))
def test_codecs_refuse_as_unpack_does(pair, msg):
    _, layout = pair
    if "Q" not in layout:
        got, want = decoded(layout, msg)
        assert got == want
