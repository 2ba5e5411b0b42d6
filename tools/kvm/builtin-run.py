"""lkvm run: start a virtual machine.  Options, defaults and messages
follow kvmtool's, so its users' scripts keep working."""

import os
import signal
import stat
import sys

from include.uapi import lib
from kvm import arch as arch_loader
from kvm import fdlimit, guestroot, msg
from kvm.arch import Arch
from kvm.cmd import Parser, size_mib
from kvm.config import Config
from kvm.devices import Hooks, Level, Registry
from kvm.errors import LkvmError
from kvm.gdb.stub import GdbStub
from kvm.ipc import IpcServer
from kvm.kvm import Kvm
from kvm.memory import check_hugetlbfs
from kvm.term import Terminal
from kvm.vm import Vm
from net.options import default_nics, parse_networks
from virtio import setup as virtio_setup
from virtio.setup import TRANSPORTS

MIN_RAM_MIB = 1
HOST_RAM_SHARE = 0.8  # kvmtool's default never takes more of the host


def host_ram_mib() -> int:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") >> 20


def default_ram_mib(cpus: int) -> int:
    return min(64 * (cpus + 3), int(host_ram_mib() * HOST_RAM_SHARE))


def find_kernel(arch: type[Arch]) -> str:
    """The first of the arch's usual places that holds a kernel."""
    candidates = arch.kernel_candidates()
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise LkvmError("could not find a kernel image; searched: " + ", ".join(candidates))


def read_file(path: str, what: str, limit: int) -> bytes:
    """The whole of a regular file no bigger than limit (the guest's RAM,
    which no image can exceed).  Opened non-blocking, so a FIFO named
    here cannot stall the open, and refused, as a device is: /dev/zero
    would be read until the host ran out of memory."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise LkvmError(f"unable to open {what} {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise LkvmError(f"{what} {path} is not a regular file")
        if st.st_size == 0:
            raise LkvmError(f"{what} {path} is empty")
        if st.st_size > limit:
            raise LkvmError(f"{what} {path} ({st.st_size >> 20} MiB) is larger than "
                            f"the guest's {limit >> 20} MiB of RAM")
        with open(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise LkvmError(f"unable to read {what} {path}: {e.strerror}") from None
    finally:
        os.close(fd)
    if not data or len(data) > limit:
        raise LkvmError(f"{what} {path} changed size while being read")
    return data


def parser() -> Parser:
    p = Parser("run")
    p.add_argument("image", nargs="?", help="kernel image (same as -k)")
    p.add_argument("--name", help="a name for the guest")
    p.add_argument("-c", "--cpus", type=int, help="number of vCPUs")
    p.add_argument("-m", "--mem", type=size_mib, help="guest RAM in MiB")
    p.add_argument("-k", "--kernel", help="kernel image to boot")
    p.add_argument("-i", "--initrd", help="initial RAM disk image")
    p.add_argument("-p", "--params", default="", help="kernel command line additions")
    p.add_argument("--console", choices=["serial", "virtio"], default="serial")
    p.add_argument("--rng", action="store_true", help="a virtio-rng device")
    p.add_argument("--balloon", action="store_true",
                   help="a virtio-balloon device, for lkvm balloon and lkvm stat")
    p.add_argument("-d", "--disk", action="append", default=[],
                   metavar="FILE[,ro|,snapshot][,direct]|DIR|ROOTFS",
                   help="a virtio-blk disk, or a directory or ~/.lkvm rootfs as the 9p root")
    p.add_argument("--9p", dest="p9", action="append", default=[], metavar="DIR[,TAG[,ro]]",
                   type=guestroot.parse_share,
                   help="share DIR with the guest as 9p mount TAG, read-only with ,ro "
                        "(repeatable)")
    p.add_argument("--virtio-transport", choices=sorted(TRANSPORTS), default="pci")
    p.add_argument("-n", "--network", action="append", default=[],
                   metavar="mode=user|tap|none[,KEY=VALUE...]",
                   help="a virtio-net NIC (repeatable); by default a Linux guest gets one "
                        "in user mode")
    p.add_argument("--no-dhcp", action="store_true",
                   help="no ip=dhcp on a rootfs guest's kernel command line")
    p.add_argument("--hugetlbfs", metavar="PATH", help="back guest RAM with hugetlbfs at PATH")
    p.add_argument("--debug-ioport", action="store_true")
    p.add_argument("--debug-mmio", action="store_true")
    p.add_argument("--debug-exits", action="store_true",
                   help="count the exits lkvm handles and time them; print them at the end")
    p.add_argument("--gdb", nargs="?", const=GDB_DEFAULT, metavar="[HOST:]PORT",
                   help=f"serve gdb's remote protocol (default {GDB_DEFAULT})")
    p.add_argument("--gdb-wait", action="store_true",
                   help="hold the vCPUs until gdb attaches and continues")
    arch_loader.load().add_options(p)
    return p


GDB_DEFAULT = "localhost:1234"


def gdb_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not port.isdigit() or not 0 <= int(port) < 1 << 16:
        raise LkvmError(f"--gdb {text}: give [HOST:]PORT, a port up to 65535 (0: any free one)")
    return host.strip("[]") or "localhost", int(port)


def configure(argv: list[str], params: str = "") -> Config:
    """The guest lkvm run ARGV describes; params go after the user's -p."""
    arch = arch_loader.load()
    args = parser().parse(argv)
    if args.image and args.kernel:
        raise LkvmError("give the kernel either as -k or as the argument, not both")
    cpus = args.cpus if args.cpus is not None else os.cpu_count()
    if cpus < 1:
        raise LkvmError(f"--cpus {cpus}: a guest needs at least one vCPU")
    if cpus > arch.MAX_CPUS:
        raise LkvmError(f"--cpus {cpus}: this architecture's guests take at most "
                        f"{arch.MAX_CPUS} vCPUs")
    ram = args.mem if args.mem is not None else default_ram_mib(cpus)
    if ram < MIN_RAM_MIB:
        raise LkvmError(f"--mem {ram}: a guest needs at least {MIN_RAM_MIB} MiB")
    if ram > host_ram_mib():
        raise LkvmError(f"--mem {ram}: more than the host's {host_ram_mib()} MiB of RAM")
    if args.hugetlbfs is not None:
        check_hugetlbfs(args.hugetlbfs)
    nics = parse_networks(args.network)     # bad input first, before any file is read
    kernel = args.image or args.kernel or find_kernel(arch)
    image = read_file(kernel, "kernel", ram << 20)
    linux = arch.boots_linux(image)
    root = guestroot.choose(args.disk, bool(args.initrd), linux, dhcp=not args.no_dhcp)
    return Config(
        name=args.name or root.name or f"guest-{os.getpid()}", cpus=cpus, ram_mib=ram,
        kernel=kernel, image=image,
        initrd=read_file(args.initrd, "initrd", ram << 20) if args.initrd else None,
        params=" ".join(filter(None, [args.params, params])), root=root,
        console=args.console, rng=args.rng, balloon=args.balloon,
        # The devices follow the root: its disks, then its shares before --9p's.
        disks=tuple(root.disks), shares=(*root.shares, *args.p9),
        transport=args.virtio_transport,
        nics=nics if args.network else default_nics(linux),
        hugetlbfs=args.hugetlbfs,
        debug_ioport=args.debug_ioport, debug_mmio=args.debug_mmio,
        debug_exits=args.debug_exits,
        gdb=gdb_address(args.gdb or GDB_DEFAULT) if args.gdb or args.gdb_wait else None,
        gdb_wait=args.gdb_wait,
        arch=arch.configure(args))


def cmd_run(argv: list[str]) -> int:
    return launch(configure(argv))


def launch(cfg: Config) -> int:
    """Run the configured guest until it ends; its exit status."""
    fdlimit.raise_to_hard()     # before any device sizes its fd budget
    devices = Registry()
    try:
        vm = build(cfg, devices)
        devices.init()
        msg.note(f"lkvm run -k {cfg.kernel} -m {cfg.ram_mib} -c {cfg.cpus} --name {cfg.name}")
        status = vm.run()
        if vm.exit_stats is not None:
            vm.exit_stats.report(sys.stderr)
    finally:
        devices.exit()
    if status == 0:
        msg.note("KVM session ended normally.", fresh_line=True)
    return status


def build(cfg: Config, devices: Registry) -> Vm:
    """The VM and its devices, each registered at its level as soon as it
    exists, so that a failure part way tears down what was made."""
    kvm = Kvm()
    devices.add(Level.CORE, Hooks("kvm", kvm.close))
    max_cpus = kvm.check_extension(lib.KVM_CAP_MAX_VCPUS)
    if cfg.cpus > max_cpus:
        raise LkvmError(f"--cpus {cfg.cpus}: this host's KVM allows at most {max_cpus}")
    arch = arch_loader.load()(cfg.arch)
    vm = Vm(kvm, arch, cfg)
    devices.add(Level.CORE, Hooks("vm", vm.close))
    term = Terminal(on_quit=lambda: vm.stop(0))
    serial = arch.add_platform_devices(vm, term.write)
    virtio = virtio_setup.attach(vm, cfg, term.write)
    devices.add(Level.VIRTIO, virtio)
    boot = arch.load_kernel(vm, cfg, cfg.params)
    arch.setup_firmware(vm, boot)
    for vcpu in vm.vcpus:
        arch.setup_vcpu(vcpu, boot)

    if cfg.gdb is not None:
        target = arch.gdb_target(vm)
        if target is None:
            raise LkvmError("--gdb: no gdb stub for this architecture yet")
        devices.add(Level.LATE, GdbStub(vm, target, *cfg.gdb, cfg.gdb_wait))

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, _: vm.stop(128 + signum))
    # ~/.lkvm/<name>.sock for lkvm list/pause/stop/debug; the registry's
    # exit removes it, so it is made once signals end lkvm through vm.run.
    ipc = IpcServer(vm, cfg.name, sysrq=serial.sysrq,
                    handlers=virtio.balloon.ipc_handlers(cfg.name) if virtio.balloon else None)
    devices.add(Level.LATE, Hooks("ipc", ipc.close))
    receive = virtio.console.receive if virtio.console else serial.receive
    devices.add(Level.LATE, Hooks("terminal", term.close, lambda: term.start(receive)))
    return vm
