"""The device tree of lkvm's sPAPR (pseries) machine: RAM, the CPUs with
what the kernel cannot learn from the PVR (caches, timebase, radix page
sizes, ibm,pa-features), /chosen, /rtas with the services' tokens (lkvm's and the in-kernel
XICS's) and the blob's place, the XICS, /vdevice with the hypervisor
console, and the PCI host bridge with its devices."""

from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvm.fdt import DeviceTree, Value, chosen_and_memory
from powerpc import phb, xics
from powerpc.console import VTY_REG
from powerpc.layout import FDT_MAX_SIZE

if TYPE_CHECKING:
    from hw.pci import PciBus

VTY = f"/vdevice/vty@{VTY_REG:x}"
TIMEBASE_HZ = 512000000         # POWER8 and POWER9's timebase
CPU_HZ = 1000000000             # nothing depends on it; Linux wants one
CACHE_LINE = 128
L1_CACHE = 0x8000
# The radix page sizes (PAPR's ibm,processor-radix-AP-encodings: the top 3
# bits the AP field, the rest the size's shift): 4K, 64K, 2M, 1G.
RADIX_AP = [0x0000000C, 0xA0000010, 0x20000015, 0x4000001E]
# The hypercall sets KVM and lkvm implement (/rtas ibm,hypertas-functions):
# the kernel takes it as running in an LPAR at all.
# hcall-multi-tce: H_STUFF_TCE clears the DMA window in 512 pages a call,
# where H_PUT_TCE would take one each.
HYPERTAS = ["hcall-term", "hcall-set-mode", "hcall-splpar", "hcall-tce", "hcall-multi-tce"]


# /chosen's ibm,architecture-vec-5: option vector 5 as the firmware would
# have settled it with the kernel (PAPR's client-architecture-support), a
# length byte then bytes 1 on.  A guest kernel without one takes the hash
# MMU, which nested KVM-HV does not offer: byte 24 says radix only, byte 26
# that the guest may invalidate its own translations (GTSE).
OV5_MMU_BYTE, OV5_MMU_RADIX_ONLY = 24, 0x40
OV5_GTSE_BYTE, OV5_RADIX_GTSE = 26, 0x40


def architecture_vec5() -> bytes:
    vec = bytearray(OV5_GTSE_BYTE + 1)
    vec[0] = len(vec) - 2
    vec[OV5_MMU_BYTE] = OV5_MMU_RADIX_ONLY
    vec[OV5_GTSE_BYTE] = OV5_RADIX_GTSE
    return bytes(vec)


def pa_features() -> bytes:
    """ibm,pa-features (PAPR, a length and a type, then feature bytes, bit
    0 the most significant): byte 0 MMU, FPU, SLB, run latch, DABR and
    no-execute; byte 5 true little-endian; byte 40 the radix MMU."""
    features = bytearray(41)
    features[0] = 0xF6
    features[5] = 0x80
    features[40] = 0x80
    return bytes([len(features), 0]) + bytes(features)


@dataclass(frozen=True)
class Machine:
    """What the device tree says, gathered by the arch from the VM."""
    ram: tuple[tuple[int, int], ...]        # (base, size)
    cpus: int
    cmdline: str
    rtas: tuple[int, int]                   # the blob's (base, size)
    tokens: dict[str, int]                  # RTAS service -> token
    dtb: int                                # where the tree itself goes
    initrd: tuple[int, int] | None = None   # [start, end)
    pci: "PciBus | None" = None             # the devices behind the host bridge


def build(m: Machine) -> bytes:
    dt = DeviceTree(reserved=(m.rtas, (m.dtb, FDT_MAX_SIZE)))
    with dt.node("", {"device_type": "chrp", "compatible": "qemu,pseries",
                      "model": "IBM pSeries (emulated by lkvm)",
                      "#address-cells": 2, "#size-cells": 2,
                      "interrupt-parent": xics.PHANDLE}):
        chosen_and_memory(dt, m.cmdline, m.initrd, m.ram,
                          {"stdout-path": VTY, "linux,stdout-path": VTY,
                           "ibm,architecture-vec-5": architecture_vec5()})
        with dt.node("cpus", {"#address-cells": 1, "#size-cells": 0}):
            for i in range(m.cpus):
                dt.leaf(f"PowerPC,POWER9@{i:x}", {
                    "device_type": "cpu", "reg": i, "ibm,ppc-interrupt-server#s": [i],
                    "clock-frequency": CPU_HZ, "timebase-frequency": TIMEBASE_HZ,
                    "d-cache-block-size": CACHE_LINE, "i-cache-block-size": CACHE_LINE,
                    "d-cache-line-size": CACHE_LINE, "i-cache-line-size": CACHE_LINE,
                    "d-cache-size": L1_CACHE, "i-cache-size": L1_CACHE,
                    "ibm,pa-features": pa_features(),
                    # Facilities the kernel learns only here: VMX and VSX
                    # (2), decimal floating point, the PURR.  Without
                    # ibm,vmx its user space dies at its first VSX insn.
                    "ibm,vmx": 2, "ibm,dfp": 1, "ibm,purr": 1,
                    "ibm,processor-radix-AP-encodings": RADIX_AP})
        rtas: dict[str, Value] = {
            "linux,rtas-base": m.rtas[0], "linux,rtas-entry": m.rtas[0],
            "rtas-size": m.rtas[1], "ibm,hypertas-functions": HYPERTAS}
        dt.leaf("rtas", rtas | dict(sorted((m.tokens | xics.TOKENS).items())))
        xics.describe(dt, m.cpus)
        with dt.node("vdevice", {"device_type": "vdevice", "compatible": "IBM,vdevice",
                                 "#address-cells": 1, "#size-cells": 0}):
            dt.leaf(VTY[len("/vdevice/"):], {"device_type": "serial", "compatible": "hvterm1",
                                             "reg": VTY_REG})
        phb.describe(dt, m.pci)
    return dt.finish(FDT_MAX_SIZE)
