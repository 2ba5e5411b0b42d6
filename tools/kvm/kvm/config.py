"""The run configuration: what `lkvm run` was asked for, built once from
its options (builtin-run.py's configure) and only read after that, as
kvmtool's struct kvm_config.  The arch's part is its own object."""

from dataclasses import dataclass, field

from net.defaults import GUEST_IP, GUEST_MAC, HOST_IP, HOST_MAC


@dataclass(frozen=True)
class Share:
    """A host directory the guest mounts over virtio-9p."""
    path: str
    tag: str | None = None      # None: the device's default tag
    readonly: bool = False


@dataclass
class Root:
    """What the guest mounts as /, as rootfs/guestroot.py reads -d, an
    initrd and the kernel's kind."""
    disks: list[str] = field(default_factory=list)     # -d specs for virtio-blk
    scsi: list[str] = field(default_factory=list)      # -d scsi: specs, "scsi:" left off
    shares: list[Share] = field(default_factory=list)  # the root's own 9p shares
    cmdline: str | None = None  # the root's fragment; None: the arch's disk root
    rootfs: str | None = None   # the ~/.lkvm rootfs booted, if one is
    name: str | None = None     # the guest's name unless --name: -d NAME's


@dataclass(frozen=True)
class Nic:
    """One virtio-net device and its back end: a -n/--network option, or
    kvmtool's default user-mode NIC."""
    mode: str = "user"              # user (passt) or tap
    guest_ip: str = GUEST_IP
    host_ip: str = HOST_IP
    guest_mac: str = GUEST_MAC
    host_mac: str = HOST_MAC
    script: str | None = None       # run with the tap's name once it is made
    downscript: str | None = None   # run with the tap's name at exit
    tapif: str | None = None        # an existing tap to attach to
    vhost: bool = False
    trans: str | None = None        # this NIC's transport over --virtio-transport
    fd: int | None = None           # an open tap fd lkvm was handed
    mq: int = 1                     # queue pairs: the tap's queues


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
    disks: tuple[str, ...] = ()     # -d FILE[,ro|,snapshot][,direct] specs, the root's first
    scsi: tuple[str, ...] = ()      # -d scsi: specs without "scsi:", LUN 0 first
    shares: tuple[Share, ...] = ()  # 9p shares, the root's first
    transport: str = "pci"          # virtio-setup's TRANSPORTS
    nics: tuple[Nic, ...] = ()
    vsock: int | None = None        # --vsock CID
    vsock_uds: str | None = None    # the userspace back end's unix socket base
    vsock_backend: str = "auto"     # auto, vhost or user
    # The host side.
    hugetlbfs: str | None = None
    debug_ioport: bool = False
    debug_mmio: bool = False
    debug_exits: bool = False       # count and time exits, print them at the end
    dev: str = "/dev/kvm"           # the KVM device node (--dev)
    nodefaults: bool = False        # no default rootfs, only the user's command line
    loglevel: str = "info"          # kvm.msg's LEVELS
    debug_iodelay: int = 0          # ms before each disk read, as kvmtool's
    firmware: bool = False          # the image is -f/--firmware's, not a kernel
    flash: str | None = None        # -F/--flash: the CFI flash's backing file
    flash_size: int = 0             # how much of it the guest sees
    single_step: bool = False       # a register dump after every guest instruction
    vnc: bool = False               # a VESA framebuffer served over VNC
    ttys: tuple[int, ...] = ()      # terminals on a pty of their own (--tty): 0 the console
    gdb: tuple[str, int] | None = None  # the gdb stub's (host, port)
    gdb_wait: bool = False          # vCPUs held until gdb continues them
    arch: object = None             # the arch's configure()

    @property
    def ram_size(self) -> int:
        return self.ram_mib << 20
