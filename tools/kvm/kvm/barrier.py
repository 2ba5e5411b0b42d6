"""Memory barriers for memory lkvm shares with a guest that runs on other
CPUs meanwhile: virtqueue rings.  Python orders nothing, so these are C
fences (include/uapi_build.py).  Linux's virtio ring code pairs with them
through virt_mb(), virt_rmb() and virt_wmb()."""

from include.uapi import lib

# Stores before it are visible before loads after it.  Even x86 lets a
# load pass an earlier store, so this one is an instruction there too.
mb = lib.lkvm_mb
# After reading an index the guest published: later reads see what the
# guest wrote before publishing it.
acquire = lib.lkvm_acquire
# Before publishing an index: what was written before is visible first.
release = lib.lkvm_release
