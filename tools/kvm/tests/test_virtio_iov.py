"""virtio/iov.py's scatter-list helpers against the bytes they stand for,
over views of every length, empty ones included."""

from hypothesis import given
from hypothesis import strategies as st

from virtio.iov import advance, split, take, total

views_and_cut = st.tuples(st.lists(st.binary(max_size=8), max_size=6), st.integers(-2, 50))


def as_views(parts: list[bytes]) -> list[memoryview]:
    return [memoryview(p) for p in parts]


@given(views_and_cut)
def test_split_cuts_the_bytes_where_asked(case):
    parts, n = case
    data = b"".join(parts)
    head, rest = split(as_views(parts), n)
    assert b"".join(head) == data[:max(n, 0)]
    assert b"".join(rest) == data[max(n, 0):]
    assert total(head) + total(rest) == len(data)


@given(views_and_cut)
def test_take_copies_exactly_n_bytes_or_none(case):
    parts, n = case
    data = b"".join(parts)
    got, rest = take(as_views(parts), max(n, 0))
    assert got == (data[:n] if 0 <= n <= len(data) else None if n > len(data) else b"")
    assert b"".join(rest) == data[max(n, 0):]


def test_split_leaves_the_callers_list_alone():
    views = as_views([b"abcd", b"efgh"])
    head, rest = split(views, 6)
    assert [bytes(v) for v in head] == [b"abcd", b"ef"]
    assert [bytes(v) for v in rest] == [b"gh"]
    assert [bytes(v) for v in views] == [b"abcd", b"efgh"]


@given(views_and_cut)
def test_advance_skips_the_first_n_bytes(case):
    parts, n = case
    data = b"".join(parts)
    n = min(max(n, 0), len(data))
    rest = advance(as_views(parts), n)
    assert b"".join(rest) == data[n:]
    assert not rest or len(rest[0])     # no empty view left at the cut
