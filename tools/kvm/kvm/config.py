"""The run configuration: what `lkvm run` was asked for, built once from
its options (builtin-run.py's configure) and only read after that, as
kvmtool's struct kvm_config.  The arch's part is its own object."""

from dataclasses import dataclass, field

from kvm.guestroot import Root, Share


@dataclass(frozen=True)
class Config:
    name: str
    cpus: int
    ram_mib: int
    kernel: str = ""                # the image's path, for messages
    image: bytes = b""
    initrd: bytes | None = None
    params: str = ""                # after lkvm's own command line
    root: Root = field(default_factory=Root)
    # Devices.
    console: str = "serial"         # serial or virtio
    rng: bool = False
    balloon: bool = False
    disks: tuple[str, ...] = ()     # -d FILE[,ro][,direct] specs, the root's first
    shares: tuple[Share, ...] = ()  # 9p shares, the root's first
    transport: str = "pci"          # virtio-setup's TRANSPORTS
    # The host side.
    hugetlbfs: str | None = None
    debug_ioport: bool = False
    debug_mmio: bool = False
    debug_exits: bool = False       # count and time exits, print them at the end
    arch: object = None             # the arch's configure()

    @property
    def ram_size(self) -> int:
        return self.ram_mib << 20
