"""A CFI parallel NOR flash with the Intel/Sharp command set, the device
kvmtool maps for arm guests with -F/--flash and EDK2 keeps its UEFI
variables in: two 16-bit chips side by side on a 32-bit bus, 64 KiB
erase blocks (over both chips), a 128-byte write buffer.  The file is the
flash, mapped shared: what the guest programs is in the file at once and
is still there after lkvm ends.

While the flash reads as an array it is also a read-only memory slot, so
the guest's loads never exit (EDK2 reads it with loads arm64 reports no
syndrome for, which an MMIO exit could not emulate); its stores still
exit, as commands.  In any other read mode the slot goes, and every
access comes here.

Command codes, status bits and the query table are the chips' (JEDEC
JESD68.01 and JEP137, Intel application note 646), not kernel ABI.
Everything the guest writes is checked against the flash's size and the
buffer's: a write that does not fit is cut at the end, a bad command
sequence sets the status register's error bits, as a chip does."""

import mmap
import os
import stat
import threading
from collections.abc import Callable
from enum import Enum

from include.uapi import ffi
from kvm import msg
from kvm.errors import LkvmError

BANK_WIDTH = 4              # bytes on the bus: two 16-bit chips
CHIPS = 2
BLOCK_SIZE = 0x10000        # an erase block, over both chips
BUFFER_SIZE = 128           # the write buffer, over both chips
ID_WINDOW = 0x800           # read-ID mode: each block answers in its first 2 KiB

# Commands (the low byte of what the guest writes).
LOCK_BLOCK = 0x01
ALT_WORD_PROGRAM = 0x10
ERASE_SETUP = 0x20
WORD_PROGRAM = 0x40
CLEAR_STATUS = 0x50
LOCK_SETUP = 0x60
READ_STATUS = 0x70
READ_ID = 0x90
READ_QUERY = 0x98
CONFIRM = 0xD0              # also "unlock block" after LOCK_SETUP
BUFFERED_PROGRAM = 0xE8
READ_ARRAY = 0xFF

# Status register bits.
SR_READY = 0x80             # every operation completes at once
SR_ERASE_ERROR = 0x20
SR_PROGRAM_ERROR = 0x10
SR_LOCKED = 0x02
SR_LOCK_ERROR = SR_PROGRAM_ERROR | SR_LOCKED          # a locked block was written
SR_SEQUENCE_ERROR = SR_ERASE_ERROR | SR_PROGRAM_ERROR  # a setup not confirmed


def query_table(size: int) -> bytes:
    """The CFI query structure, one byte per CFI address (each chip gives
    it at bus offset address * BANK_WIDTH), for a flash of `size` bytes."""
    blocks = size // BLOCK_SIZE - 1
    chip_block = BLOCK_SIZE // CHIPS // 256
    fields = {
        0x10: b"QRY",
        0x13: bytes([0x01, 0x00,      # primary command set: Intel/Sharp extended
                     0x31, 0x00,      # its extended table, at 0x31
                     0, 0, 0, 0]),    # no alternate command set
        0x1B: bytes([0x45, 0x55,      # Vcc 4.5 V to 5.5 V
                     0x00, 0x00,      # no Vpp
                     0x01, 0x01,      # typical word and buffer program: 2 us
                     0x01, 0x00,      # typical block erase 2 ms; no chip erase
                     0, 0, 0, 0]),    # the maximum timeouts: 1x typical
        0x27: bytes([(size // CHIPS).bit_length() - 1,   # chip size: 2^n bytes
                     0x05, 0x00,      # x16 and x32 interfaces
                     (BUFFER_SIZE // CHIPS).bit_length() - 1, 0x00,  # buffer: 2^n bytes
                     0x01,            # one erase block region, of
                     blocks & 0xFF, blocks >> 8,          # n + 1 blocks
                     chip_block & 0xFF, chip_block >> 8]),  # of n * 256 bytes
        0x31: b"PRI10" + bytes([0xA0, 0, 0, 0,  # instant individual lock, page read
                                0x00,           # nothing after suspend
                                0x01, 0x00,     # block lock status
                                0x50, 0x00,     # best Vcc 5.0 V, no Vpp
                                0x01, 0, 0, 0, 0]),  # one protection register
    }
    table = bytearray(max(at + len(value) for at, value in fields.items()))
    for at, value in fields.items():
        table[at:at + len(value)] = value
    return bytes(table)


class Mode(Enum):
    """What a read returns."""
    ARRAY = "array"
    STATUS = "status"
    ID = "id"
    QUERY = "query"


class State(Enum):
    """Where a command sequence stands: READY takes a new command, the
    others wait for their next bus cycle."""
    READY = "ready"
    LOCK_SETUP = "lock setup"
    WORD_PROGRAM = "word program"
    BUFFER_COUNT = "buffer count"
    BUFFER_WRITE = "buffer write"
    ERASE_SETUP = "erase setup"


# READY's commands: the state they start and the read mode they select
# (None: the mode stays).  Anything else reads the array again, as the
# chips treat an unknown command.
COMMANDS: dict[int, tuple[State, Mode | None]] = {
    READ_ID: (State.READY, Mode.ID),
    READ_STATUS: (State.READY, Mode.STATUS),
    READ_QUERY: (State.READY, Mode.QUERY),
    CLEAR_STATUS: (State.READY, None),
    CONFIRM: (State.READY, None),           # with nothing to confirm
    WORD_PROGRAM: (State.WORD_PROGRAM, Mode.STATUS),
    ALT_WORD_PROGRAM: (State.WORD_PROGRAM, Mode.STATUS),
    LOCK_SETUP: (State.LOCK_SETUP, None),
    ERASE_SETUP: (State.ERASE_SETUP, Mode.STATUS),
    BUFFERED_PROGRAM: (State.BUFFER_COUNT, Mode.STATUS),
}


def image_size(path: str, max_size: int) -> int:
    """How much of the file at `path` the guest sees: the largest power of
    two it holds, up to the arch's window.  Checked before the VM is
    made, so that a bad file is one line and no guest."""
    fd = open_image(path)
    try:
        have = os.fstat(fd).st_size
    finally:
        os.close(fd)
    if have < BLOCK_SIZE:
        raise LkvmError(f"--flash {path}: {have} bytes, less than one "
                        f"{BLOCK_SIZE >> 10} KiB erase block")
    size = min(1 << (have.bit_length() - 1), max_size)
    if size < have:
        msg.info(f"--flash {path}: only the first {size} bytes of {have} are used: the "
                 f"flash is a power of two, at most {max_size >> 20} MiB")
    return size


def open_image(path: str) -> int:
    """The flash file opened for reading and writing, as the guest will
    program it; a FIFO must not stall the open, a device is refused."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise LkvmError(f"--flash {path}: {e.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise LkvmError(f"--flash {path}: not a regular file")
    return fd


class CfiFlash:
    """The flash's MMIO handlers (kvm.bus's BusDevice) over `size` bytes
    of the file at `path`.  `map_array(host)` is to map the array, at
    host address `host`, as a read-only memory slot, `map_array(None)` to
    remove it; without it every access stays on the bus."""

    def __init__(self, path: str, size: int,
                 map_array: Callable[[int | None], None] | None = None) -> None:
        fd = open_image(path)
        try:
            if os.fstat(fd).st_size < size:
                raise LkvmError(f"--flash {path}: the file shrank below {size} bytes")
            self.mem = mmap.mmap(fd, size, flags=mmap.MAP_SHARED)
        except OSError as e:
            raise LkvmError(f"--flash {path}: {e.strerror}") from None
        finally:
            os.close(fd)
        self.size = size
        self.query = query_table(size)
        self.map_array = map_array
        self.mapped = False
        self.lock = threading.Lock()    # one vCPU at a time in the state machine
        self.state = State.READY
        self.mode = Mode.ARRAY
        self.status = SR_READY
        self.locked: set[int] = set()   # locked blocks, by number: at most size / 64 KiB
        self.count = 0                  # bytes the buffered program announced
        self.start: int | None = None   # where it programs: its first write's offset
        self.buffer = bytearray()       # the flash from `start`, with the writes on it
        self.extent = 0                 # bytes of the buffer written, from its start
        self.writes = 0                 # bytes written into the buffer
        self.closed = False
        self._sync_slot()

    # The bus's side.
    def read(self, offset: int, size: int) -> int:
        with self.lock:
            if self.closed:
                return 0
            if self.mode is Mode.ARRAY:
                # An access across the end reads what there is, zeros past it.
                return int.from_bytes(self.mem[offset:min(offset + size, self.size)], "little")
            value = self._register(offset)
        # Both chips answer a bus-wide read, each in its half.
        return {1: value & 0xFF, 2: value, 4: value * 0x10001, 8: value * 0x10001}.get(size, 0)

    def write(self, offset: int, size: int, value: int) -> None:
        if size > BANK_WIDTH:
            return      # no chip takes a 64-bit cycle; kvmtool ignores it too
        with self.lock:
            if self.closed:
                return
            self.CYCLES[self.state](self, offset, value.to_bytes(size, "little"),
                                    value & 0xFFFF)
            self._sync_slot()

    def close(self) -> None:
        """The file gets what the guest wrote; the memory slot goes."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
            if self.mapped and self.map_array is not None:
                self.map_array(None)
            self.mem.flush()
            self.mem.close()

    # Reads in the modes other than the array's: one chip's 16 bits.
    def _register(self, offset: int) -> int:
        if self.mode is Mode.STATUS:
            return self.status
        if self.mode is Mode.QUERY:
            at = offset // BANK_WIDTH
            return self.query[at] if at < len(self.query) else 0
        ident = {0: 0x0000,     # manufacturer: none
                 1: 0xFFFF,     # device: none either, as kvmtool's
                 2: int(self._is_locked(offset))}
        return ident.get(offset % ID_WINDOW // BANK_WIDTH, 0)

    # The write cycle in each state: (offset, the bytes, the command word).
    def _ready(self, offset: int, data: bytes, word: int) -> None:
        state, mode = COMMANDS.get(word & 0xFF, (State.READY, Mode.ARRAY))
        if word & 0xFF == CLEAR_STATUS:
            self.status = SR_READY
        elif state is State.BUFFER_COUNT:
            self.start, self.buffer, self.extent, self.writes = None, bytearray(), 0, 0
        self.state = state
        if mode is not None:
            self.mode = mode

    def _lock_setup(self, offset: int, data: bytes, word: int) -> None:
        block = offset // BLOCK_SIZE
        if word & 0xFF == LOCK_BLOCK:
            self.locked.add(block)
            self.mode = Mode.STATUS
        elif word & 0xFF == CONFIRM:
            self.locked.discard(block)
            self.mode = Mode.STATUS
        else:
            self.status |= SR_SEQUENCE_ERROR
        self.state = State.READY

    def _word_program(self, offset: int, data: bytes, word: int) -> None:
        if self._is_locked(offset):
            self.status |= SR_LOCK_ERROR
        else:
            self._program(offset, data)
        self.state, self.mode = State.READY, Mode.STATUS

    def _buffer_count(self, offset: int, data: bytes, word: int) -> None:
        # The count is of bus words, less one; more than the buffer holds
        # is cut to the buffer, as kvmtool does.
        self.count = min((word + 1) * BANK_WIDTH, BUFFER_SIZE)
        self.state, self.mode = State.BUFFER_WRITE, Mode.STATUS

    def _buffer_write(self, offset: int, data: bytes, word: int) -> None:
        if self._buffer(offset, data):
            return
        # A write the buffer does not take ends the sequence: the confirm,
        # or an error.
        if word & 0xFF == CONFIRM and self.start is not None:
            if self._is_locked(self.start):
                self.status |= SR_LOCK_ERROR
            else:
                self._program(self.start, self.buffer[:self.extent])
            self.mode = Mode.STATUS
        else:
            self.status |= SR_PROGRAM_ERROR
        self.state = State.READY

    def _buffer(self, offset: int, data: bytes) -> bool:
        """Take one write into the buffer, if it is announced, in the
        buffer's window (from the first write's address) and fits."""
        if self.writes >= self.count:
            return False
        if self.start is None:
            self.start = offset
            # What the guest does not write stays as it is in the flash.
            self.buffer = bytearray(self.mem[offset:offset + BUFFER_SIZE]).ljust(
                BUFFER_SIZE, b"\xff")
        at = offset - self.start
        if at < 0 or at + len(data) > self.count:
            return False
        self.buffer[at:at + len(data)] = data
        self.extent = max(self.extent, at + len(data))
        self.writes += len(data)
        return True

    def _erase_setup(self, offset: int, data: bytes, word: int) -> None:
        if word & 0xFF != CONFIRM:
            self.status |= SR_SEQUENCE_ERROR
        elif self._is_locked(offset):
            self.status |= SR_LOCK_ERROR
        else:
            start = offset - offset % BLOCK_SIZE
            self.mem[start:start + BLOCK_SIZE] = b"\xff" * BLOCK_SIZE
        self.state, self.mode = State.READY, Mode.STATUS

    CYCLES: dict[State, Callable[["CfiFlash", int, bytes, int], None]] = {
        State.READY: _ready,
        State.LOCK_SETUP: _lock_setup,
        State.WORD_PROGRAM: _word_program,
        State.BUFFER_COUNT: _buffer_count,
        State.BUFFER_WRITE: _buffer_write,
        State.ERASE_SETUP: _erase_setup,
    }

    def _is_locked(self, offset: int) -> bool:
        return offset // BLOCK_SIZE in self.locked

    def _program(self, offset: int, data: bytes | bytearray) -> None:
        """Store data at offset, cut at the flash's end."""
        end = min(offset + len(data), self.size)
        if offset < end:
            self.mem[offset:end] = data[:end - offset]

    def _sync_slot(self) -> None:
        """The array's memory slot there exactly while it reads as an array."""
        want = self.mode is Mode.ARRAY
        if self.map_array is None or want == self.mapped:
            return
        try:
            self.map_array(int(ffi.cast("uintptr_t", ffi.from_buffer(self.mem)))
                           if want else None)
        except LkvmError as e:
            # A guest's command must not end lkvm.  Without the slot every
            # access exits, slower and as right (but for a slot KVM would
            # not remove, through which the array still reads).
            msg.warning(f"flash: {e}; every access to it exits from now on")
            self.map_array = None
            return
        self.mapped = want
