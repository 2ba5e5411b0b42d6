"""One SCSI command as a logical unit sees it: the CDB, the data-out
buffers it may read and the data-in buffers it may fill, all guest
memory; and the rules for moving bytes through them."""

from collections.abc import Callable
from dataclasses import dataclass

from virtio.iov import scatter, split, take


class Overrun(Exception):
    """The CDB asks to move more bytes than the buffers hold: the
    transport reports it (virtio-scsi's VIRTIO_SCSI_S_OVERRUN), with no
    sense data and nothing written to the medium."""


@dataclass
class Command:
    cdb: bytes
    data_out: list[memoryview]
    data_in: list[memoryview]
    out_size: int               # bytes the data-out buffers hold
    in_size: int                # and the data-in ones
    written: int = 0            # bytes given to the data-in buffers

    def reply(self, data: bytes, allocation: int) -> int:
        """Give the initiator `data` cut to its allocation length (SPC-4
        §4.2.5.6: truncating is no error); the bytes moved."""
        data = data[:allocation]
        if len(data) > self.in_size:
            raise Overrun
        self.written = scatter(self.data_in, data)
        return self.written

    def data_in_views(self, size: int) -> list[memoryview]:
        if size > self.in_size:
            raise Overrun
        self.written = size
        return self.data_in if size == self.in_size else split(self.data_in, size)[0]

    def data_out_views(self, size: int) -> list[memoryview]:
        if size > self.out_size:
            raise Overrun
        return self.data_out if size == self.out_size else split(self.data_out, size)[0]

    def parameters(self, size: int) -> bytes:
        """A parameter list of `size` bytes (which the caller bounds)."""
        data, _ = take(self.data_out, size)
        if data is None:
            raise Overrun
        return data


# A command's handler: the bytes it moved through the data buffers.
Handler = Callable[[Command], int]
