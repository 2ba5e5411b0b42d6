"""The ppc64 arch's parts that run anywhere: the PAPR hypercalls and RTAS
services fed what a hostile guest can pass (addresses outside RAM, lengths,
tokens, flags), the hypervisor console's bounded input, the device tree
(read back by dtc), the vmlinux and flat images, and where they go."""

import struct
import subprocess
import time
from types import SimpleNamespace

import pytest

from kvm.irq import IrqRouting
from kvm.memory import GuestMemory
from powerpc import dtb, hcall, rtas, tce
from powerpc.arch import Ppc64
from powerpc.boot import load
from powerpc.console import INPUT_LIMIT, VTY_REG, HvConsole
from powerpc.image import EHDR, PHDR, Image
from powerpc.layout import FDT_MAX_SIZE, RTAS_SIZE
from tests.helpers import guest, run_lkvm
from tests.test_arm64 import cells, decompile

MIB = 1 << 20
RAM = 16 * MIB
U32 = 0xFFFFFFFF


class Services:
    def __init__(self) -> None:
        self.shown = b""
        self.events: list[str] = []

    def display(self, data: bytes) -> None:
        self.shown += data

    def power_off(self) -> None:
        self.events.append("power-off")

    def reboot(self) -> None:
        self.events.append("reboot")

    # Two CPUs: 0 runs, 1 is stopped.
    stopped = {0: False, 1: True}

    def cpu_stopped(self, cpu: int) -> bool | None:
        return self.stopped.get(cpu)

    def start_cpu(self, cpu: int, entry: int, r3: int) -> None:
        self.events.append(f"start {cpu} {entry:#x} {r3:#x}")
        self.stopped = {**self.stopped, cpu: False}

    def stop_cpu(self, cpu: int) -> None:
        self.events.append(f"stop {cpu}")
        self.stopped = {**self.stopped, cpu: True}


class Platform:
    """hcall.Platform over a real guest memory and console."""

    def __init__(self) -> None:
        self.mem = GuestMemory([(0, RAM)])
        self.out = b""
        self.console = HvConsole(self._out)
        self.services = Services()
        self.rtas_ = rtas.Rtas(self.mem, self.services)
        self.tces = tce.TceTable()
        self.endian: list[bool] = []
        self.tables: list[tuple[int, bool]] = []
        self.mmio: list[tuple[int, int, int]] = []

    def _out(self, data: bytes) -> None:
        self.out += data

    def term_write(self, termno: int, data: bytes) -> bool:
        return self.console.write(termno, data)

    def term_read(self, termno: int, limit: int) -> bytes | None:
        return self.console.read(termno, limit)

    def set_interrupt_endian(self, little: bool) -> None:
        self.endian.append(little)

    def configure_radix(self, process_table: int, gtse: bool) -> bool:
        self.tables.append((process_table, gtse))
        return True

    def rtas(self, args_addr: int) -> int:
        return self.rtas_.call(args_addr)

    def mmio_read(self, addr: int, size: int) -> int:
        return (1 << 8 * size) - 1

    def mmio_write(self, addr: int, size: int, value: int) -> None:
        self.mmio.append((addr, size, value))


@pytest.fixture
def p() -> Platform:
    return Platform()


def call(p: Platform, nr: int, *args: int) -> tuple[int, ...]:
    """A hypercall as KVM hands it over: nine argument registers."""
    return hcall.dispatch(p, nr, [*args, *[0] * (9 - len(args))])


# The DMA window's TCEs.
LIOBN, PAGE, LAST = tce.LIOBN, tce.TCE_PAGE, tce.WINDOW_SIZE - tce.TCE_PAGE


def test_tces_put_stuffed_and_read_back(p: Platform) -> None:
    assert call(p, hcall.H_PUT_TCE, LIOBN, PAGE, 0x1234000 | 3) == (hcall.H_SUCCESS,)
    assert call(p, hcall.H_GET_TCE, LIOBN, PAGE) == (hcall.H_SUCCESS, 0x1234003)
    # The clear the kernel makes as it sets the bus up: 512 at a time.
    assert call(p, hcall.H_STUFF_TCE, LIOBN, 0, 0, 512) == (hcall.H_SUCCESS,)
    assert call(p, hcall.H_GET_TCE, LIOBN, PAGE) == (hcall.H_SUCCESS, 0)
    assert call(p, hcall.H_STUFF_TCE, LIOBN, LAST, 0x5000 | 1, 1) == (hcall.H_SUCCESS,)
    assert call(p, hcall.H_GET_TCE, LIOBN, LAST) == (hcall.H_SUCCESS, 0x5001)
    # A list of big-endian TCEs in guest memory.
    p.mem.write(0x3000, struct.pack(">3Q", 0x7000 | 1, 0x8000 | 2, 0x9000 | 3))
    assert call(p, hcall.H_PUT_TCE_INDIRECT, LIOBN, 2 * PAGE, 0x3000, 3) == (hcall.H_SUCCESS,)
    assert [call(p, hcall.H_GET_TCE, LIOBN, i * PAGE)[1] for i in (2, 3, 4)] == \
        [0x7001, 0x8002, 0x9003]


@pytest.mark.parametrize("nr, args", [
    (hcall.H_PUT_TCE, [LIOBN + 1, 0, 0]),               # another window
    (hcall.H_PUT_TCE, [(1 << 64) - 1, 0, 0]),
    (hcall.H_PUT_TCE, [LIOBN, 8, 0]),                   # unaligned
    (hcall.H_PUT_TCE, [LIOBN, tce.WINDOW_SIZE, 0]),     # past the window
    (hcall.H_PUT_TCE, [LIOBN, (1 << 64) - PAGE, 0]),
    (hcall.H_PUT_TCE, [LIOBN, 0, 0x1234 << 12 | 4]),    # reserved TCE bits
    (hcall.H_GET_TCE, [LIOBN, tce.WINDOW_SIZE]),
    (hcall.H_GET_TCE, [LIOBN + 1, 0]),
    (hcall.H_STUFF_TCE, [LIOBN, LAST, 0, 2]),           # runs past the window
    (hcall.H_STUFF_TCE, [LIOBN, 0, 0, (1 << 64) - 1]),
    (hcall.H_STUFF_TCE, [LIOBN, 0, 0, 0]),
    (hcall.H_STUFF_TCE, [LIOBN, 0, 0x10, 1]),
    (hcall.H_PUT_TCE_INDIRECT, [LIOBN, 0, 0x3000, 513]),        # more than a page
    (hcall.H_PUT_TCE_INDIRECT, [LIOBN, 0, 0x3008, 1]),          # list unaligned
    (hcall.H_PUT_TCE_INDIRECT, [LIOBN, 0, RAM, 1]),             # list outside RAM
    (hcall.H_PUT_TCE_INDIRECT, [LIOBN, 0, (1 << 64) - PAGE, 1]),
    (hcall.H_PUT_TCE_INDIRECT, [LIOBN, LAST, 0x3000, 2]),
    (hcall.H_PUT_TCE_INDIRECT, [LIOBN, 0, 0x4000, 2]),          # a bad TCE in the list
])
def test_tce_hypercalls_refuse(p: Platform, nr: int, args: list[int]) -> None:
    p.mem.write(0x4000, struct.pack(">2Q", 0x7000, 0x8000 | 0x10))
    before = [call(p, hcall.H_GET_TCE, LIOBN, i * PAGE) for i in (0, 1)]
    assert call(p, nr, *args) == (hcall.H_PARAMETER,)
    assert [call(p, hcall.H_GET_TCE, LIOBN, i * PAGE) for i in (0, 1)] == before


def test_put_term_char(p: Platform) -> None:
    hi, lo = int.from_bytes(b"Hello, w", "big"), int.from_bytes(b"orld!\n\0\0", "big")
    assert call(p, hcall.H_PUT_TERM_CHAR, VTY_REG, 14, hi, lo) == (hcall.H_SUCCESS,)
    assert p.out == b"Hello, world!\n"


@pytest.mark.parametrize("termno, length", [
    (VTY_REG, 17), (VTY_REG, 1 << 63), (VTY_REG, (1 << 64) - 1),  # more than two registers
    (0, 1), (VTY_REG + 1, 1), ((1 << 64) - 1, 1),                   # no such terminal
])
def test_put_term_char_refuses(p: Platform, termno: int, length: int) -> None:
    assert call(p, hcall.H_PUT_TERM_CHAR, termno, length, U32, U32) == (hcall.H_PARAMETER,)
    assert p.out == b""


def test_get_term_char_takes_16_at_a_time(p: Platform) -> None:
    p.console.receive(b"0123456789abcdefXY")
    status, n, hi, lo = call(p, hcall.H_GET_TERM_CHAR, VTY_REG)
    assert (status, n) == (hcall.H_SUCCESS, 16)
    assert hi.to_bytes(8, "big") + lo.to_bytes(8, "big") == b"0123456789abcdef"
    status, n, hi, lo = call(p, hcall.H_GET_TERM_CHAR, VTY_REG)
    assert (n, hi.to_bytes(8, "big")) == (2, b"XY\0\0\0\0\0\0")
    assert call(p, hcall.H_GET_TERM_CHAR, VTY_REG)[:2] == (hcall.H_SUCCESS, 0)
    assert call(p, hcall.H_GET_TERM_CHAR, 7) == (hcall.H_PARAMETER,)


def test_console_input_is_bounded(p: Platform) -> None:
    for _ in range(3):
        p.console.receive(b"x" * INPUT_LIMIT)
    p.console.sysrq(b"t")    # dropped too: the buffer is full
    got = b""
    while n := call(p, hcall.H_GET_TERM_CHAR, VTY_REG)[1]:
        got += b"x" * n
    assert len(got) == INPUT_LIMIT


def test_set_mode(p: Platform) -> None:
    le = hcall.H_SET_MODE_RESOURCE_LE
    assert call(p, hcall.H_SET_MODE, 1, le, 0, 0) == (hcall.H_SUCCESS,)
    assert call(p, hcall.H_SET_MODE, 0, le, 0, 0) == (hcall.H_SUCCESS,)
    assert p.endian == [True, False]
    assert call(p, hcall.H_SET_MODE, 2, le, 0, 0) == (hcall.H_UNSUPPORTED_FLAG,)
    assert call(p, hcall.H_SET_MODE, 1, le, 1, 0) == (hcall.H_P3,)
    assert call(p, hcall.H_SET_MODE, 1, le, 0, U32) == (hcall.H_P4,)
    assert call(p, hcall.H_SET_MODE, 1, 99, 0, 0) == (hcall.H_P2,)
    assert p.endian == [True, False]


def test_random(p: Platform) -> None:
    a, b = call(p, hcall.H_RANDOM), call(p, hcall.H_RANDOM)
    assert a[0] == b[0] == hcall.H_SUCCESS and a[1] != b[1]


def test_register_process_table(p: Platform) -> None:
    new_radix = hcall.PROC_TABLE_NEW | hcall.PROC_TABLE_RADIX
    assert call(p, hcall.H_REGISTER_PROC_TBL, new_radix | hcall.PROC_TABLE_GTSE,
                0x100000, 0, 4) == (hcall.H_SUCCESS,)
    assert p.tables == [(0x100004, True)]
    for flags, table, size in [
            (hcall.PROC_TABLE_NEW, 0x100000, 4),    # hash
            (hcall.PROC_TABLE_RADIX, 0x100000, 4),  # not a new table
            (new_radix, 0x100800, 4),               # not page aligned
            (new_radix, 1 << 62, 4),                # beyond the field
            (new_radix, 0x100000, 25),              # larger than allowed
            (new_radix, 0x100000, (1 << 64) - 1)]:
        assert call(p, hcall.H_REGISTER_PROC_TBL, flags, table, 0, size) == \
            (hcall.H_PARAMETER,)
    assert len(p.tables) == 1


def test_logical_ci(p: Platform) -> None:
    assert call(p, hcall.H_LOGICAL_CI_LOAD, 4, 0x2000_0000_0000) == (hcall.H_SUCCESS, U32)
    assert call(p, hcall.H_LOGICAL_CI_STORE, 2, 0x2000_0000_0000, 0x12345) == \
        (hcall.H_SUCCESS,)
    assert p.mmio == [(0x2000_0000_0000, 2, 0x2345)]
    for size in (0, 3, 16, (1 << 64) - 1):
        assert call(p, hcall.H_LOGICAL_CI_LOAD, size, 0) == (hcall.H_PARAMETER,)
        assert call(p, hcall.H_LOGICAL_CI_STORE, size, 0, 0) == (hcall.H_PARAMETER,)


def test_unknown_hypercalls(p: Platform) -> None:
    for nr in (0, 4, 0x1234, 0xF001, (1 << 64) - 1):
        assert call(p, nr) == (hcall.H_FUNCTION,)


# RTAS: the argument block at BLOCK, big-endian words.
BLOCK = 0x1000


def rtas_call(p: Platform, token: int, args: list[int], nret: int,
              addr: int = BLOCK) -> tuple[int, list[int]]:
    p.mem.write(addr, struct.pack(f">{3 + len(args)}I", token, len(args), nret, *args))
    status = call(p, hcall.KVMPPC_H_RTAS, addr)[0]
    rets = struct.unpack(f">{nret}I", p.mem.read(addr + 12 + 4 * len(args), 4 * nret))
    return status, [r - (1 << 32) if r >> 31 else r for r in rets]


def test_rtas_display_and_power(p: Platform) -> None:
    tokens = rtas.TOKENS
    assert rtas_call(p, tokens["display-character"], [ord("A")], 1) == (hcall.H_SUCCESS, [0])
    assert p.services.shown == b"A"
    assert rtas_call(p, tokens["power-off"], [0, 0], 1) == (hcall.H_SUCCESS, [0])
    assert rtas_call(p, tokens["system-reboot"], [], 1) == (hcall.H_SUCCESS, [0])
    assert p.services.events == ["power-off", "reboot"]


def test_rtas_time_of_day(p: Platform) -> None:
    tokens = rtas.TOKENS
    status, rets = rtas_call(p, tokens["get-time-of-day"], [], 8)
    assert status == hcall.H_SUCCESS and rets[0] == 0
    assert abs(rets[1] - time.gmtime().tm_year) <= 1 and 1 <= rets[2] <= 12
    assert rtas_call(p, tokens["set-time-of-day"], [2030, 1, 2, 3, 4, 5, 0], 1)[1] == [0]
    assert rtas_call(p, tokens["get-time-of-day"], [], 8)[1][1:4] == [2030, 1, 2]
    for bad in ([2030, 13, 1, 0, 0, 0, 0], [2030, 2, 30, 0, 0, 0, 0], [2030, 1, 1, 24, 0, 0, 0],
                [U32, 1, 1, 0, 0, 0, 0], [2030, 0, 1, 0, 0, 0, 0], [1969, 1, 1, 0, 0, 0, 0]):
        assert rtas_call(p, tokens["set-time-of-day"], bad, 1)[1] == \
            [rtas.RTAS_PARAMETER_ERROR]
    assert rtas_call(p, tokens["get-time-of-day"], [], 8)[1][1] == 2030


def test_rtas_cpus(p: Platform) -> None:
    tokens = rtas.TOKENS
    query = tokens["query-cpu-stopped-state"]
    assert rtas_call(p, query, [1], 2) == (hcall.H_SUCCESS, [0, rtas.CPU_STOPPED])
    assert rtas_call(p, query, [0], 2) == (hcall.H_SUCCESS, [0, rtas.CPU_RUNNING])
    assert rtas_call(p, tokens["start-cpu"], [1, 0x8000, 0x1234], 1) == (hcall.H_SUCCESS, [0])
    assert rtas_call(p, query, [1], 2)[1] == [0, rtas.CPU_RUNNING]
    # Started twice, or one that does not exist.
    assert rtas_call(p, tokens["start-cpu"], [1, 0, 0], 1)[1] == [rtas.RTAS_HARDWARE_ERROR]
    for cpu in (2, U32, 1 << 31):
        assert rtas_call(p, tokens["start-cpu"], [cpu, 0, 0], 1)[1] == \
            [rtas.RTAS_PARAMETER_ERROR]
        assert rtas_call(p, query, [cpu], 2)[1] == [rtas.RTAS_PARAMETER_ERROR, 0]
    # stop-self stops the CPU that calls it.
    p.mem.write(BLOCK, struct.pack(">3I", tokens["stop-self"], 0, 1))
    assert p.rtas_.call(BLOCK, caller=1) == hcall.H_SUCCESS
    assert p.services.events == ["start 1 0x8000 0x1234", "stop 1"]


@pytest.mark.parametrize("token, args, nret", [
    (0, [], 1), (U32, [], 1), (rtas.TOKEN_BASE + len(rtas.SERVICES), [], 1),  # no such token
    (rtas.TOKENS["power-off"], [0], 1),          # too few arguments
    (rtas.TOKENS["display-character"], [1, 2], 1),
    (rtas.TOKENS["get-time-of-day"], [], 3),     # too few results
])
def test_rtas_bad_calls(p: Platform, token: int, args: list[int], nret: int) -> None:
    assert rtas_call(p, token, args, nret) == \
        (hcall.H_SUCCESS, [rtas.RTAS_PARAMETER_ERROR] + [0] * (nret - 1))
    assert p.services.events == [] and p.services.shown == b""


@pytest.mark.parametrize("addr", [RAM, RAM - 8, (1 << 64) - 1, (1 << 64) - 12])
def test_rtas_block_outside_ram(p: Platform, addr: int) -> None:
    assert call(p, hcall.KVMPPC_H_RTAS, addr) == (hcall.H_PARAMETER,)


@pytest.mark.parametrize("nargs, nret", [(16, 1), (0, 17), (U32, 1), (1, U32), (1, 0)])
def test_rtas_block_counts(p: Platform, nargs: int, nret: int) -> None:
    p.mem.write(BLOCK, struct.pack(">3I", rtas.TOKENS["power-off"], nargs, nret))
    assert call(p, hcall.KVMPPC_H_RTAS, BLOCK) == (hcall.H_PARAMETER,)
    assert p.services.events == []


def test_rtas_results_past_ram(p: Platform) -> None:
    """The header fits, the results would not: nothing is written."""
    addr = RAM - 12
    p.mem.write(addr, struct.pack(">3I", rtas.TOKENS["get-time-of-day"], 0, 8))
    assert call(p, hcall.KVMPPC_H_RTAS, addr) == (hcall.H_PARAMETER,)


def test_rtas_blob_makes_the_hypercall() -> None:
    """mr r4,r3; li r3,0xf000 in two; sc 1; blr, big-endian."""
    words = struct.unpack(">5I", rtas.BLOB)
    assert words[2] & 0xFFFF == hcall.KVMPPC_H_RTAS and words[3] == 0x44000022


# The device tree.
def machine(**changes) -> dtb.Machine:
    m = dtb.Machine(ram=((0, 256 * MIB),), cpus=1, cmdline="console=hvc0 quiet",
                    rtas=(0xFFEF000, RTAS_SIZE), tokens=rtas.TOKENS, dtb=0xFFF0000,
                    initrd=(0x8000000, 0x8100000))
    return dtb.Machine(**{**m.__dict__, **changes})


def test_dt_node_by_node() -> None:
    blob = dtb.build(machine())
    dt = decompile(blob)
    root = dt["/"]
    assert root["device_type"] == '"chrp"'
    assert cells(root["#address-cells"]) == [2] and cells(root["#size-cells"]) == [2]
    chosen = dt["chosen"]
    assert chosen["bootargs"] == '"console=hvc0 quiet"'
    assert chosen["linux,stdout-path"] == f'"/vdevice/vty@{VTY_REG:x}"'
    assert cells(chosen["linux,initrd-start"]) == [0, 0x8000000]
    assert cells(chosen["linux,initrd-end"]) == [0, 0x8100000]
    # Option vector 5 tells the kernel to take the radix MMU (hash is
    # what it falls back to without, which nested KVM-HV cannot run).
    vec5 = bytes(int(b, 16) for b in chosen["ibm,architecture-vec-5"].strip("[]").split())
    assert vec5[24] & 0xC0 == 0x40 and vec5[26] & 0x40
    assert cells(dt["memory@0"]["reg"]) == [0, 0, 0, 256 * MIB]
    cpu = dt["cpus/PowerPC,POWER9@0"]
    assert cpu["device_type"] == '"cpu"' and cells(cpu["reg"]) == [0]
    assert cells(cpu["timebase-frequency"]) == [512000000]
    assert cells(cpu["ibm,vmx"]) == [2]     # VSX: Debian's user space uses it
    features = bytes(int(b, 16) for b in cpu["ibm,pa-features"].strip("[]").split())
    assert features[0] == len(features) - 2 and features[2 + 40] & 0x80  # radix
    node = dt["rtas"]
    assert cells(node["linux,rtas-base"]) == cells(node["linux,rtas-entry"]) == [0xFFEF000]
    assert cells(node["rtas-size"]) == [RTAS_SIZE]
    for name, token in rtas.TOKENS.items():
        assert cells(node[name]) == [token]
    assert "hcall-term" in node["ibm,hypertas-functions"]
    vdevice = dt["vdevice"]
    assert vdevice["compatible"] == '"IBM,vdevice"'
    vty = dt[f"vdevice/vty@{VTY_REG:x}"]
    assert vty["compatible"] == '"hvterm1"' and cells(vty["reg"]) == [VTY_REG]
    # The RTAS page and the tree itself are reserved from the kernel.
    dts = subprocess.run(["dtc", "-q", "-I", "dtb", "-O", "dts"], input=blob,
                         capture_output=True, check=True, timeout=30).stdout.decode()
    assert f"/memreserve/\t0x{0xFFEF000:016x} 0x{RTAS_SIZE:016x};" in dts
    assert f"/memreserve/\t0x{0xFFF0000:016x} 0x{FDT_MAX_SIZE:016x};" in dts


def test_dt_cpus_and_no_initrd() -> None:
    dt = decompile(dtb.build(machine(cpus=3, initrd=None)))
    assert "linux,initrd-start" not in dt["chosen"]
    assert [cells(dt[f"cpus/PowerPC,POWER9@{i}"]["reg"]) for i in range(3)] == [[0], [1], [2]]


# Images and where they go.
def elf(segments: list[tuple[int, bytes, int]], entry: int = 0xC000000000000000,
        machine: int = 21, data: int = 1) -> bytes:
    """A ppc64le ELF with PT_LOAD (paddr, bytes, memsz) segments."""
    phoff = EHDR.size
    offset = phoff + PHDR.size * len(segments)
    ident = b"\x7fELF" + bytes([2, data, 1]) + bytes(9)
    out = EHDR.pack(ident, 2, machine, 1, entry, phoff, 0, 0, EHDR.size, PHDR.size,
                    len(segments), 0, 0, 0)
    body = b""
    for paddr, payload, memsz in segments:
        out += PHDR.pack(1, 7, offset + len(body), 0xC000000000000000 | paddr, paddr,
                         len(payload), memsz, 0x10000)
        body += payload
    return out + body


def test_vmlinux_loads_at_its_real_addresses() -> None:
    image = Image.parse(elf([(0, b"\x11" * 64, 0x2000), (0x10000, b"\x22" * 8, 8)]))
    assert image.linux and image.entry == 0 and image.end == 0x10008
    vm = SimpleNamespace(ram_size=RAM, mem=GuestMemory([(0, RAM)]))
    vm.mem.write(0x100, b"\xff" * 16)                   # bss is cleared
    boot = load(vm, image, b"\x33" * 5000, "quiet")
    assert vm.mem.read(0, 64) == b"\x11" * 64 and vm.mem.read(0x100, 16) == bytes(16)
    assert vm.mem.read(0x10000, 8) == b"\x22" * 8
    assert boot.dtb == RAM - FDT_MAX_SIZE and boot.rtas == boot.dtb - RTAS_SIZE
    assert vm.mem.read(boot.rtas, len(rtas.BLOB)) == rtas.BLOB
    start, end = boot.initrd
    assert end - start == 5000 and end <= boot.rtas and start % 4096 == 0


def test_flat_binary() -> None:
    image = Image.parse(b"\x60\x00\x00\x00" * 4)
    assert not image.linux and image.entry == 0 and image.end == 16


@pytest.mark.parametrize("data, message", [
    (elf([(0, b"x", 1)], machine=62), "not a little-endian ppc64"),
    (elf([(0, b"x", 1)], data=2), "not a little-endian ppc64"),
    (elf([(0, b"x", 1)])[:EHDR.size + 10], "truncated"),
    (elf([(0, b"x" * 100, 10)]), "malformed"),            # filesz > memsz
    (elf([])[:40], "too short"),
    (elf([]), "nothing to load"),
])
def test_bad_images(data: bytes, message: str) -> None:
    from kvm.errors import LkvmError
    with pytest.raises(LkvmError, match=message):
        Image.parse(data)


@pytest.mark.parametrize("segments, initrd, message", [
    ([(0, b"x", RAM)], None, "give the guest more"),
    ([(0, b"x", RAM - MIB)], b"y" * 2 * MIB, "initrd"),
])
def test_placement_that_does_not_fit(segments, initrd, message) -> None:
    from kvm.errors import LkvmError
    vm = SimpleNamespace(ram_size=RAM, mem=GuestMemory([(0, RAM)]))
    with pytest.raises(LkvmError, match=message):
        load(vm, Image.parse(elf(segments)), initrd, "")


def test_irq_routing_without_irqchip_routes() -> None:
    """An arch with no in-kernel controller yet (ppc64): MSIs from GSI 0."""
    vm = SimpleNamespace(arch=SimpleNamespace(irqchip_routes=list, LEGACY_IRQS=(4096,),
                                              MSI_ROUTES=True))
    assert IrqRouting(vm).next_gsi == 0


def test_no_msi_routes_on_xics() -> None:
    """KVM's XICS takes no KVM_SET_GSI_ROUTING (ENOTTY): virtio-pci's MSI-X
    vectors get GSIs, and lkvm asks KVM nothing (no fd to ask here)."""
    vm = SimpleNamespace(fd=-1, arch=Ppc64())
    routing = IrqRouting(vm)
    gsis = [routing.add_msi() for _ in range(3)]
    routing.set_msi(gsis[0], 0xFEE00000, 0x41)
    assert gsis == [0, 1, 2]


def test_console_hv_is_the_hypervisor_consoles() -> None:
    """--console hv names sPAPR's console: elsewhere one line says which
    consoles there are (x86 here)."""
    r = run_lkvm("run", "--console", "hv", guest("hello"))
    assert r.returncode != 0
    assert r.stderr.decode().strip().splitlines() == [
        "Fatal: --console hv: this architecture's guests have serial or virtio"]
