"""The CFI flash (-F/--flash) through its MMIO handlers, as a guest's
driver drives it: every command of the Intel/Sharp set, the bad ones,
what reaches the file, the offsets at its end, and the read-only memory
slot that is there exactly while the flash reads as an array; then a
tiny guest on /dev/kvm driving it through KVM."""

import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hw import cfi_flash
from hw.cfi_flash import BLOCK_SIZE, CfiFlash
from kvm.errors import LkvmError
from tests.helpers import KVMDIR, TINY_TIMEOUT, guest

SIZE = 4 * BLOCK_SIZE           # four erase blocks
FILL = 0xA5


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "flash.img"
    path.write_bytes(bytes([FILL]) * SIZE)
    return path


@pytest.fixture
def flash(image):
    dev = CfiFlash(str(image), SIZE)
    yield dev
    dev.close()


def command(dev: CfiFlash, cmd: int, offset: int = 0) -> None:
    """A command as EDK2 writes it: the same byte to both chips."""
    dev.write(offset, 4, cmd * 0x10001)


def status(dev: CfiFlash) -> int:
    command(dev, 0x70)
    return dev.read(0, 4) & 0xFFFF


def query(dev: CfiFlash, at: int) -> int:
    return dev.read(at * 4, 1)


def test_query_table(flash):
    command(flash, 0x98)
    assert bytes(query(flash, 0x10 + i) for i in range(3)) == b"QRY"
    assert (query(flash, 0x13), query(flash, 0x15)) == (0x01, 0x31)   # Intel/Sharp, table at 0x31
    assert bytes(query(flash, 0x31 + i) for i in range(5)) == b"PRI10"
    # Geometry: each chip half the size, one region of n + 1 blocks of
    # 32 KiB per chip, a 64-byte buffer per chip.
    assert query(flash, 0x27) == (SIZE // 2).bit_length() - 1
    assert (query(flash, 0x2A), query(flash, 0x2C)) == (6, 1)
    assert [query(flash, 0x2D + i) for i in range(4)] == [3, 0, 0x80, 0]
    # Both chips answer a bus-wide read; 1, 2 and 8 bytes too; past the
    # table and odd sizes read 0.
    assert flash.read(0x10 * 4, 4) == ord("Q") * 0x10001
    assert flash.read(0x10 * 4, 2) == ord("Q") and flash.read(0x10 * 4, 8) == ord("Q") * 0x10001
    assert flash.read(0x100 * 4, 4) == 0 and flash.read(SIZE - 4, 4) == 0
    assert flash.read(0x10 * 4, 3) == 0


def test_ids_and_status(flash):
    assert status(flash) == 0x80                       # ready, no error
    command(flash, 0x90)
    assert (flash.read(0, 2), flash.read(4, 2), flash.read(8, 2)) == (0, 0xFFFF, 0)
    assert flash.read(12, 2) == 0
    command(flash, 0x60, BLOCK_SIZE)
    command(flash, 0x01, BLOCK_SIZE)                   # lock block 1
    command(flash, 0x90)
    assert flash.read(BLOCK_SIZE + 8, 2) == 1 and flash.read(8, 2) == 0
    # Back to the array: both READ_ARRAY and an unknown command.
    command(flash, 0xFF)
    assert flash.read(0, 4) == FILL * 0x01010101
    command(flash, 0x90)
    command(flash, 0x33)
    assert flash.read(0, 1) == FILL


@pytest.mark.parametrize("program", [0x40, 0x10])
def test_word_program_reaches_the_file(image, program):
    dev = CfiFlash(str(image), SIZE)
    command(dev, program)
    dev.write(0x100, 4, 0x12345678)
    assert dev.read(0, 4) & 0xFFFF == 0x80             # reads status after a program
    command(dev, 0xFF)
    assert dev.read(0x100, 4) == 0x12345678
    dev.close()
    # Written through at once, and there for the next lkvm.
    assert image.read_bytes()[0x100:0x104] == bytes.fromhex("78563412")
    again = CfiFlash(str(image), SIZE)
    assert again.read(0x100, 4) == 0x12345678
    again.close()


def test_buffered_program(flash, image):
    command(flash, 0xE8, 0x200)
    flash.write(0x200, 4, 0x00030003)                  # four bus words
    for i, word in enumerate([0x11111111, 0x22222222, 0x44444444]):
        flash.write(0x200 + 4 * (i if i < 2 else 3), 4, word)   # word 2 left out
    flash.write(0x200, 4, 0x00D000D0)                  # fourth write: the buffer is full
    assert flash.read(0, 4) & 0xFFFF == 0x80           # still waits for the confirm
    command(flash, 0xD0, 0x200)
    assert status(flash) == 0x80
    command(flash, 0xFF)
    assert [flash.read(0x200 + 4 * i, 4) for i in range(5)] == [
        0x00D000D0, 0x22222222, FILL * 0x01010101, 0x44444444, FILL * 0x01010101]
    assert image.read_bytes()[0x204:0x208] == b"\x22" * 4


def test_buffer_count_is_cut_to_the_buffer(flash):
    command(flash, 0xE8)
    flash.write(0, 4, 0xFFFF)                          # 65536 words asked: 128 bytes
    for i in range(32):
        flash.write(4 * i, 4, 0x01020304)
    command(flash, 0xD0)
    assert status(flash) == 0x80
    command(flash, 0xFF)
    assert flash.read(4 * 31, 4) == 0x01020304 and flash.read(4 * 32, 4) == FILL * 0x01010101


@pytest.mark.parametrize("writes", [
    [(0x300, 0x1), (0x2FC, 0x2)],           # before the buffer's first address
    [(0x300, 0x1), (0x300 + 8, 0x2)],       # past the two words announced
])
def test_buffer_writes_outside_the_window(flash, writes):
    """A write the buffer does not take and that is no confirm ends the
    sequence with a program error; nothing is programmed."""
    command(flash, 0xE8, 0x300)
    flash.write(0x300, 4, 1)                           # two bus words
    for offset, value in writes:
        flash.write(offset, 4, value)
    assert status(flash) == 0x90
    command(flash, 0xFF)
    assert flash.read(0x300, 4) == FILL * 0x01010101
    command(flash, 0x50)
    assert status(flash) == 0x80


def test_block_erase(flash):
    command(flash, 0x20)
    command(flash, 0xD0, BLOCK_SIZE + 0x1234)          # any address in block 1
    assert flash.read(0, 4) & 0xFFFF == 0x80
    command(flash, 0xFF)
    assert flash.read(BLOCK_SIZE - 4, 4) == FILL * 0x01010101
    assert flash.read(BLOCK_SIZE, 4) == 0xFFFFFFFF
    assert flash.read(2 * BLOCK_SIZE - 4, 4) == 0xFFFFFFFF
    assert flash.read(2 * BLOCK_SIZE, 4) == FILL * 0x01010101


@pytest.mark.parametrize("setup", [0x20, 0x60])
def test_setup_not_confirmed_is_a_sequence_error(flash, setup):
    command(flash, setup)
    command(flash, 0x33)
    assert status(flash) == 0xB0                       # erase and program error bits
    command(flash, 0xFF)
    assert flash.read(0, 4) == FILL * 0x01010101
    command(flash, 0x50)                               # clear status
    assert status(flash) == 0x80


def test_locked_block_refuses_program_and_erase(flash):
    command(flash, 0x60, 2 * BLOCK_SIZE)
    command(flash, 0x01, 2 * BLOCK_SIZE)
    for program in ([(0x40, 2 * BLOCK_SIZE), (0x1, 2 * BLOCK_SIZE)],
                    [(0x20, 2 * BLOCK_SIZE), (0xD0, 2 * BLOCK_SIZE)],
                    [(0xE8, 2 * BLOCK_SIZE), (0, 2 * BLOCK_SIZE), (7, 2 * BLOCK_SIZE),
                     (0xD0, 2 * BLOCK_SIZE)]):
        for cmd, offset in program:
            flash.write(offset, 4, cmd)
        assert status(flash) == 0x92                   # program error, block locked
        command(flash, 0x50)
    command(flash, 0xFF)
    assert flash.read(2 * BLOCK_SIZE, 4) == FILL * 0x01010101
    command(flash, 0x60, 2 * BLOCK_SIZE)
    command(flash, 0xD0, 2 * BLOCK_SIZE)               # unlock
    command(flash, 0x40)
    flash.write(2 * BLOCK_SIZE, 4, 0x0BADF00D)
    assert status(flash) == 0x80
    command(flash, 0xFF)
    assert flash.read(2 * BLOCK_SIZE, 4) == 0x0BADF00D


def test_the_end_of_the_flash(flash, image):
    """Accesses that cross the last byte are cut there, never past it:
    the file keeps its size."""
    assert flash.read(SIZE - 2, 4) == FILL * 0x0101
    command(flash, 0x40)
    flash.write(SIZE - 2, 4, 0x11223344)
    command(flash, 0xE8)
    flash.write(SIZE - 4, 4, 3)
    flash.write(SIZE - 4, 4, 0x55667788)
    flash.write(SIZE - 1, 4, 0x99AABBCC)
    command(flash, 0xD0)
    assert status(flash) == 0x80
    command(flash, 0x20)
    command(flash, 0xD0, SIZE - 1)
    command(flash, 0xFF)
    assert flash.read(SIZE - BLOCK_SIZE, 4) == 0xFFFFFFFF
    flash.close()
    assert os.path.getsize(image) == SIZE


def test_wide_writes_are_ignored(flash):
    flash.write(0, 8, 0x9800000098)
    assert flash.read(0, 4) == FILL * 0x01010101


def test_array_is_a_memory_slot_only_while_it_reads_as_an_array(image):
    slots: list[int | None] = []
    dev = CfiFlash(str(image), SIZE, slots.append)
    assert len(slots) == 1 and slots[0]                # mapped from the start
    # Each command and the rest of its sequence.
    for cmd, *rest in ([0x70], [0x90], [0x98], [0x40, 7], [0x20, 0xD0], [0xE8, 0, 7, 0xD0]):
        command(dev, cmd)
        assert slots[-1] is None, hex(cmd)             # reads must exit now
        for word in rest:
            dev.write(0, 4, word)
        assert slots[-1] is None, hex(cmd)             # the status is what reads
        command(dev, 0xFF)
        assert slots[-1], hex(cmd)
    n = len(slots)
    command(dev, 0x60)                                 # lock setup keeps the mode
    command(dev, 0xFF)
    assert len(slots) == n
    dev.close()
    assert slots[-1] is None
    dev.read(0, 4), dev.write(0, 4, 0x98)              # after close: no exception


def test_a_slot_kvm_refuses(image, capsys):
    """Then every access exits: a warning, and the flash works on."""
    def refuse(host: int | None) -> None:
        raise LkvmError("cannot give 0 MiB to the guest at 0x2000000: Invalid argument")

    dev = CfiFlash(str(image), SIZE, refuse)
    assert "every access to it exits from now on" in capsys.readouterr().err
    assert dev.read(0, 1) == FILL
    command(dev, 0x98)
    assert query(dev, 0x10) == ord("Q")
    dev.close()


OPS = st.lists(st.tuples(st.integers(0, SIZE - 1), st.sampled_from([1, 2, 3, 4, 8]),
                         st.one_of(st.sampled_from([0x01, 0x10, 0x20, 0x40, 0x50, 0x60, 0x70,
                                                    0x90, 0x98, 0xD0, 0xE8, 0xFF]),
                                   st.integers(0, (1 << 64) - 1)),
                         st.booleans()), max_size=60)


@settings(max_examples=300, deadline=None)
@given(ops=OPS)
def test_hostile_sequences(tmp_path_factory, ops):
    """Any sequence of accesses: no exception, reads fit their size, the
    file keeps its size, the buffer its bound."""
    path = tmp_path_factory.mktemp("fuzz") / "flash.img"
    path.write_bytes(b"\xff" * SIZE)
    dev = CfiFlash(str(path), SIZE, lambda host: None)
    for offset, size, value, is_write in ops:
        if is_write:
            dev.write(offset, size, value & ((1 << 8 * size) - 1))
        else:
            assert 0 <= dev.read(offset, size) < 1 << 8 * size
        assert len(dev.buffer) <= cfi_flash.BUFFER_SIZE and len(dev.locked) <= SIZE // BLOCK_SIZE
    dev.close()
    assert os.path.getsize(path) == SIZE


def test_image_size(tmp_path, capsys):
    def sized(name: str, size: int) -> str:
        path = tmp_path / name
        with open(path, "wb") as f:
            f.truncate(size)
        return str(path)

    assert cfi_flash.image_size(sized("a", 2 << 20), 16 << 20) == 2 << 20
    assert capsys.readouterr().err == ""
    # Cut to a power of two, and to the window, with a note.
    assert cfi_flash.image_size(sized("b", 3 << 20), 16 << 20) == 2 << 20
    assert "only the first 2097152 bytes of 3145728 are used" in capsys.readouterr().err
    assert cfi_flash.image_size(sized("c", 64 << 20), 16 << 20) == 16 << 20
    assert cfi_flash.image_size(sized("d", BLOCK_SIZE), 16 << 20) == BLOCK_SIZE


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "No such file or directory"),
    (lambda p: p.mkdir(), "Is a directory"),
    (lambda p: os.mkfifo(p), "not a regular file"),
    (lambda p: p.write_bytes(b"\xff" * (BLOCK_SIZE - 1)),
     "65535 bytes, less than one 64 KiB erase block"),
    (lambda p: p.write_bytes(b""), "0 bytes, less than one 64 KiB erase block"),
])
def test_bad_images(tmp_path, make, message):
    path = tmp_path / "flash"
    make(path)
    with pytest.raises(LkvmError, match=f"^--flash {path}: {message}$"):
        cfi_flash.image_size(str(path), 16 << 20)


def test_a_file_that_shrank(image):
    os.truncate(image, BLOCK_SIZE)
    with pytest.raises(LkvmError, match="the file shrank below 262144 bytes"):
        CfiFlash(str(image), SIZE)


# lkvm.py ARGS on x86 with the flash window arm64 has, put where the
# flash guest looks for it, and each read that reaches the device while
# the flash reads as an array (which the memory slot should take) said.
WITH_FLASH = """
import os, runpy, sys
sys.path.insert(0, os.path.dirname(sys.argv[1]))
from hw import cfi_flash
from x86.arch import X86
X86.FLASH = (0xC0000000, 1 << 24)
bus_read = cfi_flash.CfiFlash.read
def read(self, offset, size):
    if self.mode is cfi_flash.Mode.ARRAY:
        print(f"array read exit at {offset:#x}", file=sys.stderr)
    return bus_read(self, offset, size)
cfi_flash.CfiFlash.read = read
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_guest_programs_the_flash_through_kvm(tmp_path):
    path = tmp_path / "flash.img"
    path.write_bytes(b"\xff" * BLOCK_SIZE)
    r = subprocess.run([sys.executable, "-c", WITH_FLASH, f"{KVMDIR}/lkvm.py",
                        "run", "-c", "1", "-m", "16", "-F", str(path), guest("flash")],
                       capture_output=True, stdin=subprocess.DEVNULL, timeout=TINY_TIMEOUT)
    err = r.stderr.decode()
    assert r.returncode == 0, err
    # "Q" read in query mode, "ok" read back as an array, and no read of
    # the array exited: the read-only slot took them.
    assert b"Qok\n" in r.stdout, r.stdout
    assert "array read exit" not in err and "Warning" not in err, err
    assert path.read_bytes()[:8] == b"\xff" * 4 + b"ok\n\x00"
    assert os.path.getsize(path) == BLOCK_SIZE
