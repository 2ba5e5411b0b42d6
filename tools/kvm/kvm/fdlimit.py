"""lkvm's fd limit: the whole of what the host allows.

What a guest makes lkvm hold (9p fids and open files, eventfds of its
queues, IPC clients) counts against RLIMIT_NOFILE, and the usual soft
limit of 1024 is a small part of the hard one.  Each consumer still
keeps to its own budget (virtio/p9/fids.py), taken from this limit.
"""

import resource

NR_OPEN = "/proc/sys/fs/nr_open"    # the kernel's ceiling on any fd limit


def raise_to_hard() -> int:
    """Lift the soft limit to the hard one (or the kernel's ceiling, when
    the hard limit is above it); the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for want in (hard, _nr_open()):
        if want is None or want == resource.RLIM_INFINITY or soft >= want:
            continue
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
            return min(want, hard)
        except (ValueError, OSError):
            continue
    return soft


def _nr_open() -> int | None:
    try:
        with open(NR_OPEN) as f:
            return int(f.read())
    except (OSError, ValueError):
        return None
