"""lkvm run: start a virtual machine.  Options, defaults and messages
follow kvmtool's, so its users' scripts keep working."""

import argparse
import dataclasses
import os
import signal
import stat
import sys

from cli.cmd import Parser, size_mib
from hw.vesa import VIDMODE, Vesa
from include.uapi import lib
from ipc.server import IpcServer
from kvm import arch as arch_loader
from kvm import fdlimit, guestdebug, msg
from kvm.arch import Arch
from kvm.config import Config
from kvm.devices import Hooks, Level, Registry
from kvm.errors import LkvmError, UsageError
from kvm.kvm import KVM_DEV, Kvm
from kvm.memory import check_hugetlbfs
from kvm.vm import Vm
from net.options import default_nics, parse_networks
from rootfs import guestroot
from util.pty import PtyTerminal, parse_tty
from util.term import Terminal
from virtio import setup as virtio_setup
from virtio.setup import TRANSPORTS

MIN_RAM_MIB = 1
MAX_IODELAY_MS = 10_000
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
        # read(n) allocates n bytes first: ask for the file, not the RAM,
        # which -m may make larger than the host's.
        with open(fd, "rb", closefd=False) as f:
            data = f.read(st.st_size + 1)
    except OSError as e:
        raise LkvmError(f"unable to read {what} {path}: {e.strerror}") from None
    finally:
        os.close(fd)
    if not data or len(data) > st.st_size:
        raise LkvmError(f"{what} {path} changed size while being read")
    return data


# `lkvm run -h`: kvmtool's groups and, within each, its order (the
# option table in builtin-run.c); the arch adds "Arch-specific options:".
SYNOPSIS = "lkvm run [<options>] [<kernel image>]"
GROUPS = (
    ("Basic options:", ("--name", "--cpus", "--mem", "--disk", "--balloon", "--vnc", "--gtk",
                        "--sdl", "--rng", "--nodefaults", "--9p", "--console", "--vsock",
                        "--vsock-uds", "--vsock-backend",
                        "--dev", "--tty", "--sandbox", "--hugetlbfs", "--virtio-legacy",
                        "--virtio-transport", "--loglevel")),
    ("Kernel options:", ("--kernel", "--initrd", "--params", "--firmware", "--flash")),
    ("Networking options:", ("--network", "--no-dhcp")),
    ("VFIO options:", ("--vfio-pci",)),
    ("Debug options:", ("--debug", "--debug-single-step", "--debug-ioport", "--debug-mmio",
                        "--debug-iodelay", "--debug-exits", "--gdb", "--gdb-wait")),
)


def non_negative(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"'{text}' is negative")
    return value


def iodelay_ms(text: str) -> int:
    # A delay past this would only look like a hung disk.
    value = non_negative(text)
    if value > MAX_IODELAY_MS:
        raise argparse.ArgumentTypeError(f"'{text}' is more than {MAX_IODELAY_MS} ms")
    return value


def sandbox_param(script: str) -> str:
    """--sandbox SCRIPT: the guest init runs it, as the guest sees the
    host's / at /host, instead of a shell (kvmtool links it in as
    virt/sandbox.sh; lkvm's init takes the path from the command line)."""
    path = os.path.realpath(script)
    if not os.path.isfile(path):
        raise LkvmError(f"--sandbox {script}: no such file")
    if any(c.isspace() for c in path):
        raise LkvmError(f"--sandbox {script}: a path with white space cannot go on "
                        "the kernel command line")
    return f"lkvm_sandbox=/host{path}"


def check_display(args: argparse.Namespace) -> None:
    """kvmtool's framebuffer options: one display at most, and lkvm has
    only VNC; --vidmode matters only with one."""
    displays = [name for name in ("vnc", "sdl", "gtk") if getattr(args, name)]
    if len(displays) > 1:
        raise LkvmError("Only one of --vnc, --sdl or --gtk can be specified")
    if displays and displays[0] != "vnc":
        raise LkvmError(f"--{displays[0]}: lkvm is built without {displays[0].upper()} "
                        "support; use --vnc")
    if args.vnc and args.vidmode not in (None, VIDMODE):
        raise LkvmError(f"--vidmode {args.vidmode:#x}: lkvm's VESA framebuffer has only "
                        f"mode {VIDMODE:#x} (640x480, 32 bits per pixel)")


def parser() -> Parser:
    p = Parser("run", SYNOPSIS, GROUPS)
    p.add_argument("image", nargs="?", help="kernel image (same as -k)")
    p.add_argument("--name", metavar="guest name", help="a name for the guest")
    p.add_argument("-c", "--cpus", type=int, help="number of vCPUs")
    p.add_argument("-m", "--mem", type=size_mib, metavar="size[BKMGTP]",
                   help="guest RAM, in MiB unless a suffix says otherwise")
    p.add_argument("-k", "--kernel", metavar="kernel", help="kernel image to boot")
    p.add_argument("-i", "--initrd", metavar="initrd", help="initial RAM disk image")
    p.add_argument("-p", "--params", default="", metavar="params",
                   help="kernel command line additions")
    p.add_argument("-f", "--firmware", metavar="firmware",
                   help="firmware image to boot instead of a kernel")
    p.add_argument("-F", "--flash", metavar="flash",
                   help="Flash image to present to virtual machine")
    p.add_argument("--console", choices=["serial", "virtio", "hv"], default="serial",
                   metavar="serial, virtio or hv", help="the guest's console")
    p.add_argument("--rng", action="store_true", help="a virtio-rng device")
    p.add_argument("--balloon", action="store_true",
                   help="a virtio-balloon device, for lkvm balloon and lkvm stat")
    p.add_argument("-d", "--disk", action="append", default=[],
                   metavar="[scsi:]FILE[,ro|,snapshot][,direct]|scsi:WWPN:TPGT|DIR|ROOTFS",
                   help="a virtio-blk disk, a virtio-scsi LUN (scsi:), or a directory or "
                        "~/.lkvm rootfs as the 9p root")
    p.add_argument("--9p", dest="p9", action="append", default=[], metavar="DIR[,TAG[,ro]]",
                   type=guestroot.parse_share,
                   help="share DIR with the guest as 9p mount TAG, read-only with ,ro "
                        "(repeatable)")
    p.add_argument("--virtio-transport", choices=sorted(TRANSPORTS), default="pci",
                   metavar="|".join(sorted(TRANSPORTS)), help="how virtio devices attach")
    p.add_argument("--virtio-legacy", dest="virtio_transport", action="store_const",
                   const="pci-legacy", help="legacy virtio-pci: the pci-legacy transport")
    p.add_argument("--dev", default=KVM_DEV, metavar="DEVICE_FILE", help="the KVM device file")
    p.add_argument("--sandbox", metavar="SCRIPT",
                   help="run SCRIPT (a host file) in the rootfs guest instead of a shell")
    p.add_argument("--tty", action="append", default=[], type=parse_tty, metavar="N",
                   help="terminal N (0 the console, 1-3 ttyS1-3) on a new pty, whose "
                        "path lkvm prints (repeatable)")
    p.add_argument("--nodefaults", action="store_true",
                   help="no default rootfs, and only -p on the kernel command line")
    p.add_argument("--loglevel", type=msg.check_level, default=msg.DEFAULT_LEVEL,
                   metavar="error|warning|info|debug", help="how much lkvm tells")
    p.add_argument("--debug", dest="loglevel", action="store_const", const="debug",
                   help="debug messages too")
    p.add_argument("--debug-iodelay", type=iodelay_ms, default=0, metavar="MS",
                   help="delay each disk read by MS milliseconds")
    p.add_argument("-n", "--network", action="append", default=[],
                   metavar="mode=user|tap|none[,KEY=VALUE...]",
                   help="a virtio-net NIC (repeatable); by default a Linux guest gets one "
                        "in user mode")
    p.add_argument("--no-dhcp", action="store_true",
                   help="no ip=dhcp on a rootfs guest's kernel command line")
    p.add_argument("--vsock", type=int, metavar="CID", help="a virtio-vsock device, guest CID")
    p.add_argument("--vsock-uds", metavar="PATH",
                   help="the userspace vsock's unix socket: host programs CONNECT through "
                        "it, guest connections to port P reach PATH_P "
                        "(default ~/.lkvm/NAME.vsock)")
    p.add_argument("--vsock-backend", choices=["auto", "vhost", "user"], default="auto",
                   help="vhost-vsock, or lkvm's own unix-socket back end; auto: vhost "
                        "where /dev/vhost-vsock is")
    p.add_argument("--hugetlbfs", metavar="PATH", help="back guest RAM with hugetlbfs at PATH")
    p.add_argument("--vnc", action="store_true",
                   help="a VESA framebuffer, served over VNC on 127.0.0.1:5900 or up")
    p.add_argument("--sdl", action="store_true", help="not built in lkvm; VNC is")
    p.add_argument("--gtk", action="store_true", help="not built in lkvm; VNC is")
    p.add_argument("--vidmode", type=non_negative, metavar="MODE",
                   help=f"the framebuffer's video mode (only {VIDMODE:#x}, the default)")
    p.add_argument("--debug-ioport", action="store_true",
                   help="report an access to a port no device claims and stop the vCPU")
    p.add_argument("--debug-mmio", action="store_true",
                   help="report accesses to MMIO no device claims")
    p.add_argument("--debug-single-step", action="store_true",
                   help="stop after every guest instruction and dump the registers")
    p.add_argument("--debug-exits", action="store_true",
                   help="count the exits lkvm handles and time them; print them at the end")
    p.add_argument("--gdb", nargs="?", const=GDB_DEFAULT, metavar="[HOST:]PORT",
                   help=f"serve gdb's remote protocol (default {GDB_DEFAULT})")
    p.add_argument("--gdb-wait", action="store_true",
                   help="hold the vCPUs until gdb attaches and continues")
    arch_loader.load().add_options(p.add_argument_group("Arch-specific options:"))
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
        raise UsageError("give the kernel either as -k or as the argument, not both")
    if args.firmware and (args.image or args.kernel):
        raise LkvmError("Only one of --kernel or --firmware can be specified")
    if args.firmware and args.initrd:
        msg.warning("Ignoring initrd file when loading a firmware image")
        args.initrd = None
    if args.console not in (*arch.CONSOLES, "virtio"):
        raise LkvmError(f"--console {args.console}: this architecture's guests have "
                        f"{', '.join(arch.CONSOLES)} or virtio")
    cpus = args.cpus if args.cpus is not None else min(os.cpu_count(), arch.MAX_CPUS)
    if cpus < 1:
        raise LkvmError(f"--cpus {cpus}: a guest needs at least one vCPU")
    if cpus > arch.MAX_CPUS:
        raise LkvmError(f"--cpus {cpus}: this architecture's guests take at most "
                        f"{arch.MAX_CPUS} vCPUs")
    ram = args.mem if args.mem is not None else default_ram_mib(cpus)
    if ram < MIN_RAM_MIB:
        raise LkvmError(f"--mem {ram}: a guest needs at least {MIN_RAM_MIB} MiB")
    if ram > host_ram_mib():
        # kvmtool's words; a sparse guest may well fit, so it is not refused.
        msg.warning(f"Guest memory size {ram}MB exceeds host physical RAM size "
                    f"{host_ram_mib()}MB")
    if args.hugetlbfs is not None:
        check_hugetlbfs(args.hugetlbfs)
    check_display(args)
    if args.sandbox:
        params = " ".join(filter(None, [sandbox_param(args.sandbox), params]))
    nics = parse_networks(args.network)     # bad input first, before any file is read
    arch.check_transports([("--virtio-transport ", args.virtio_transport),
                           *(("-n trans=", nic.trans) for nic in nics if nic.trans)])
    check_vsock(args)
    flash_size = check_flash(arch, args.flash)
    kernel = args.firmware or args.image or args.kernel or find_kernel(arch)
    image = read_file(kernel, "firmware" if args.firmware else "kernel", ram << 20)
    linux = not args.firmware and arch.boots_linux(image)
    # --nodefaults: no default rootfs, as in kvmtool.
    root = guestroot.choose(args.disk, bool(args.initrd), linux and not args.nodefaults,
                            dhcp=not args.no_dhcp)
    if args.sandbox and root.rootfs is None:
        raise LkvmError("--sandbox runs its script in a rootfs guest: give no -d and no -i, "
                        "or -d with a rootfs name")
    return Config(
        name=args.name or root.name or f"guest-{os.getpid()}", cpus=cpus, ram_mib=ram,
        kernel=kernel, image=image,
        initrd=read_file(args.initrd, "initrd", ram << 20) if args.initrd else None,
        params=" ".join(filter(None, [args.params, params])), root=root,
        console=args.console, rng=args.rng, balloon=args.balloon,
        # The devices follow the root: its disks, then its shares before --9p's.
        disks=tuple(root.disks), shares=(*root.shares, *args.p9), scsi=tuple(root.scsi),
        transport=args.virtio_transport,
        nics=nics if args.network else default_nics(linux),
        vsock=args.vsock, vsock_uds=args.vsock_uds, vsock_backend=args.vsock_backend,
        hugetlbfs=args.hugetlbfs,
        debug_ioport=args.debug_ioport, debug_mmio=args.debug_mmio,
        debug_exits=args.debug_exits,
        dev=args.dev, nodefaults=args.nodefaults, loglevel=args.loglevel,
        debug_iodelay=args.debug_iodelay, firmware=bool(args.firmware),
        flash=args.flash if flash_size else None, flash_size=flash_size,
        ttys=tuple(dict.fromkeys(args.tty)), single_step=args.debug_single_step,
        vnc=args.vnc,
        gdb=gdb_address(args.gdb or GDB_DEFAULT) if args.gdb or args.gdb_wait else None,
        gdb_wait=args.gdb_wait,
        arch=arch.configure(args))


def check_flash(arch: type[Arch], path: str | None) -> int:
    """-F/--flash: how much of the file the guest sees; 0 for none.  An
    arch without a flash ignores the option, as kvmtool (which builds the
    device for arm only) does, but says so."""
    if path is None:
        return 0
    if arch.FLASH is None:
        msg.warning(f"--flash {path}: this architecture's guests have no CFI flash; ignored")
        return 0
    from hw import cfi_flash  # only -F loads the flash
    return cfi_flash.image_size(path, arch.FLASH[1])


def check_vsock(args: object) -> None:
    if args.vsock is None:
        if args.vsock_uds is not None or args.vsock_backend != "auto":
            raise LkvmError("--vsock-uds and --vsock-backend need --vsock CID")
        return
    from virtio import vsock  # its back ends' modules, for --vsock only
    vsock.check_cid(args.vsock)
    vsock.check_backend(args.vsock_backend, args.vsock_uds)


def cmd_run(argv: list[str]) -> int:
    return launch(configure(argv))


def launch(cfg: Config) -> int:
    """Run the configured guest until it ends; its exit status."""
    fdlimit.raise_to_hard()     # before any device sizes its fd budget
    msg.set_level(cfg.loglevel)
    devices = Registry()
    try:
        vm = build(cfg, devices)
        devices.init()
        image = f"--firmware {cfg.kernel}" if cfg.firmware else f"-k {cfg.kernel}"
        msg.note(f"lkvm run {image} -m {cfg.ram_mib} -c {len(vm.vcpus)} --name {cfg.name}")
        status = vm.run()
        if vm.exit_stats is not None:
            vm.exit_stats.report(sys.stderr)
    finally:
        devices.exit()
    if status == 0:
        msg.note("KVM session ended normally.", fresh_line=True)
    return status


def max_vcpus(kvm: Kvm) -> int:
    """KVM's limit, as kvmtool's kvm__max_cpus() finds it: KVM_CAP_MAX_VCPUS,
    or on kernels without it the recommended KVM_CAP_NR_VCPUS, or 4."""
    return (kvm.check_extension(lib.KVM_CAP_MAX_VCPUS)
            or kvm.check_extension(lib.KVM_CAP_NR_VCPUS) or 4)


def within_kvm_limit(cfg: Config, kvm: Kvm) -> Config:
    """More vCPUs than KVM allows are cut down to its limit with a
    warning, as kvmtool's kvm_cpu__init() does, not refused."""
    limit = max_vcpus(kvm)
    if cfg.cpus <= limit:
        return cfg
    msg.warning(f"# Limit the number of CPUs to {limit}")
    return dataclasses.replace(cfg, cpus=limit)
def attach_tty(vm: Vm, arch: Arch, n: int, devices: Registry) -> None:
    """--tty N for a UART other than the console: its own pty."""
    port = arch.serial_port(n)
    if port is None:
        raise LkvmError(f"--tty {n}: this guest has no ttyS{n}")
    pty = PtyTerminal(n, lambda why: vm.stop(1, why))
    port.output = pty.write
    devices.add(Level.LATE, Hooks(f"tty{n}", pty.close, lambda: pty.start(port.receive)))


def attach_vnc(vm: Vm, name: str, devices: Registry) -> None:
    """--vnc: the VESA framebuffer on the PCI bus, and its VNC server."""
    from ui.vnc import VncServer  # only --vnc loads the server
    vesa = Vesa(vm)
    vesa.plug()
    vm.framebuffer = (vesa.addr, vesa.framebuffer)
    server = VncServer(vesa.framebuffer, name)
    devices.add(Level.LATE, Hooks("vnc", server.close, server.start))


def attach_flash(vm: Vm, base: int, cfg: Config, devices: Registry) -> None:
    """-F/--flash: the CFI flash at the arch's window, its array a
    read-only memory slot where KVM has them (else every read exits)."""
    slot = vm.next_slot
    vm.next_slot += 1
    readonly = vm.kvm.check_extension(lib.KVM_CAP_READONLY_MEM)

    def map_array(host: int | None) -> None:
        # No size deletes the slot.
        vm.set_memory_slot(slot, base, cfg.flash_size if host else 0, host or 0,
                           lib.KVM_MEM_READONLY)

    from hw import cfi_flash
    flash = cfi_flash.CfiFlash(cfg.flash, cfg.flash_size, map_array if readonly else None)
    devices.add(Level.DEV, Hooks("flash", flash.close))
    vm.mmio.register(base, cfg.flash_size, flash)
    vm.flash = (base, cfg.flash_size)


def build(cfg: Config, devices: Registry) -> Vm:
    """The VM and its devices, each registered at its level as soon as it
    exists, so that a failure part way tears down what was made."""
    kvm = Kvm(cfg.dev)
    devices.add(Level.CORE, Hooks("kvm", kvm.close))
    cfg = within_kvm_limit(cfg, kvm)
    arch = arch_loader.load()(cfg.arch)
    vm = Vm(kvm, arch, cfg)
    devices.add(Level.CORE, Hooks("vm", vm.close))
    # --tty 0 puts the console itself, serial or virtio, on a pty.
    term = PtyTerminal(0, lambda why: vm.stop(1, why)) if 0 in cfg.ttys else \
        Terminal(on_quit=lambda: vm.stop(0))
    serial = arch.add_platform_devices(vm, term.write)
    if cfg.flash is not None:
        attach_flash(vm, arch.FLASH[0], cfg, devices)
    for n in cfg.ttys:
        if n:
            attach_tty(vm, arch, n, devices)
    virtio = virtio_setup.attach(vm, cfg, term.write)
    devices.add(Level.VIRTIO, virtio)
    if cfg.vnc:
        attach_vnc(vm, cfg.name, devices)
    boot = arch.load_firmware(vm, cfg) if cfg.firmware else arch.load_kernel(vm, cfg, cfg.params)
    arch.setup_firmware(vm, boot)
    for vcpu in vm.vcpus:
        arch.setup_vcpu(vcpu, boot)
        if cfg.single_step:
            guestdebug.single_step(vcpu)

    if cfg.gdb is not None:
        from kvm.gdb.stub import GdbStub  # only --gdb loads the stub
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
