"""virtio-console with one port: hvc0.  What the guest writes goes to the
terminal; the terminal's keystrokes fill the guest's receive buffers, or
wait (a bounded amount) until it posts some."""

from collections.abc import Callable

from include.uapi import lib
from kvm.cstruct import to_bytes
from virtio.device import VirtioDevice
from virtio.iov import chunks
from virtio.queue import Virtqueue

RX, TX = 0, 1
PENDING_MAX = 64 << 10  # keystrokes kept while the guest posts no buffers
OUT_CHUNK = 4096        # bytes of output copied out of guest memory at a time


class Console(VirtioDevice):
    device_id = lib.VIRTIO_ID_CONSOLE
    name = "console"
    num_queues = 2

    def __init__(self, mem: object, output: Callable[[bytes], None]) -> None:
        super().__init__(mem)
        self.output = output
        self.pending = bytearray()
        self.config = bytearray(to_bytes("struct virtio_console_config", cols=80, rows=25,
                                         max_nr_ports=1))

    def process(self, index: int, queue: Virtqueue) -> None:
        if index == TX:
            while (chain := queue.pop()) is not None:
                for chunk in chunks(chain.readable, OUT_CHUNK):
                    self.output(chunk)
                queue.push(chain.head, 0)
        else:
            self._fill(queue)

    def _fill(self, queue: Virtqueue) -> None:
        while self.pending and (chain := queue.pop()) is not None:
            written = 0
            for buf in chain.writable:
                n = min(len(buf), len(self.pending) - written)
                buf[:n] = self.pending[written:written + n]
                written += n
            del self.pending[:written]
            queue.push(chain.head, written)

    def receive(self, data: bytes) -> None:
        """Terminal input for the guest (from the terminal's thread)."""
        with self.lock:
            self.pending += data[:PENDING_MAX - len(self.pending)]
        self.notify(RX)

    def on_reset(self) -> None:
        self.pending.clear()
