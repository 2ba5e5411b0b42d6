"""Scatter lists of guest memory views: splitting a header off the front,
a status byte off the back, copying out a bounded amount at a time."""

from collections.abc import Iterator


def total(views: list[memoryview]) -> int:
    return sum(map(len, views))


def take(views: list[memoryview], n: int) -> tuple[bytes | None, list[memoryview]]:
    """The first `n` bytes (None if there are fewer) and the views after."""
    head, rest = split(views, n)
    data = b"".join(head)
    return (data if len(data) == n else None), rest


def prefix(views: list[memoryview], limit: int) -> bytes:
    """A copy of the first `limit` bytes, or of all there are if fewer:
    a guest's buffers may span its whole RAM, many times over."""
    parts: list[memoryview] = []
    for v in views:
        if limit <= 0:
            break
        parts.append(v[:limit])
        limit -= len(parts[-1])
    return b"".join(parts)      # the one copy


def chunks(views: list[memoryview], size: int) -> Iterator[bytes]:
    """Copies of the bytes the views hold, `size` at a time: never more in
    hand however many times over the views cover guest RAM."""
    out = bytearray()
    for v in views:
        while v:
            room = size - len(out)
            out += v[:room]
            v = v[room:]
            if len(out) == size:
                yield bytes(out)
                out = bytearray()
    if out:
        yield bytes(out)


def scatter(views: list[memoryview], data: bytes) -> int:
    """Copy `data` into the views in order, as far as they reach; the
    bytes written."""
    done = 0
    for v in views:
        n = min(len(v), len(data) - done)
        v[:n] = data[done:done + n]
        done += n
    return done


def drop_last(views: list[memoryview]) -> tuple[memoryview | None, list[memoryview]]:
    """The last byte as a view (None if there is none) and the views before."""
    rest = [v for v in views if len(v)]
    if not rest:
        return None, []
    last = rest.pop()
    if len(last) > 1:
        rest.append(last[:-1])
    return last[-1:], rest


def advance(views: list[memoryview], n: int) -> list[memoryview]:
    """The views after the first `n` bytes (empty ones at the cut left
    out)."""
    for i, v in enumerate(views):
        if n < len(v):
            return [v[n:], *views[i + 1:]] if n else views[i:]
        n -= len(v)
    return []


def split(views: list[memoryview], n: int) -> tuple[list[memoryview], list[memoryview]]:
    """The views of the first `n` bytes and the views after them."""
    head: list[memoryview] = []
    for i, v in enumerate(views):
        if n <= 0:
            return head, views[i:]
        if len(v) > n:
            head.append(v[:n])
            return head, [v[n:], *views[i + 1:]]
        head.append(v)
        n -= len(v)
    return head, []
