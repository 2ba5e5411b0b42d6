"""Tests of scripts/kvmconfig.py and its kconfiglib shim.

The fast tests build a small Kconfig tree in tmp_path.  The slow ones
compare with the kernel's own C kconfig on Debian's linux-source tree and
are skipped when that tree has not been unpacked (`make guest-kernel`
unpacks it).
"""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TOP = Path(__file__).resolve().parents[3]
SCRIPTS = TOP / "scripts"


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name.replace("-", "_"),
                                                  SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


kvmconfig = _load_script("kvmconfig")
kconfig_compat = kvmconfig.kconfig_compat
guest_kernel = _load_script("guest-kernel")

# A kernel-shaped tree: MODULES in the >= 5.13 syntax, options with unmet
# dependencies and prompt conditions, a defconfig and tinyconfig fragments.
TOP_KCONFIG = """\
mainmenu "Linux/$(SRCARCH) $(KERNELVERSION) Kernel Configuration"

config MODULES
	bool "Enable loadable module support"
	modules
	help
	  Loadable modules, a help line the shim must leave alone:
	  modules

config EXPERT
	bool "Expert"

config EMBEDDED
	bool "Embedded"
	select EXPERT

config SCSI
	tristate "SCSI"

config SCSI_VIRTIO
	tristate "virtio SCSI"
	depends on SCSI

config EPOLL
	bool "epoll" if EXPERT
	default y

config VIRTIO
	tristate

config VIRTIO_BLK
	tristate "virtio block"
	select VIRTIO

config VIRTIO_NET
	tristate "virtio net"
	select VIRTIO

config SLOW
	bool "Not in tinyconfig"
	default y

source "arch/$(SRCARCH)/Kconfig"
"""

ARCH_KCONFIG = """\
config 64BIT
	bool "64-bit kernel"
	default y
"""

KVM_GUEST = """\
CONFIG_VIRTIO_BLK=y
CONFIG_SCSI_VIRTIO=y
CONFIG_S390_GUEST=y
"""

LKVM = """\
# lkvm's own options
CONFIG_64BIT=y
CONFIG_VIRTIO_NET=y
CONFIG_EPOLL=y
"""


def make_tree(root: Path, kconfig: str = TOP_KCONFIG) -> Path:
    files = {
        "Kconfig": kconfig,
        "Makefile": "VERSION = 6\nPATCHLEVEL = 1\nSUBLEVEL = 9\n"
                    "EXTRAVERSION = -test\n",
        "arch/x86/Kconfig": ARCH_KCONFIG,
        "arch/x86/configs/x86_64_defconfig": "CONFIG_MODULES=y\nCONFIG_SCSI=m\n",
        "kernel/configs/kvm_guest.config": KVM_GUEST,
        "kernel/configs/tiny-base.config": "CONFIG_EMBEDDED=y\n",
        "kernel/configs/tiny.config": "# CONFIG_64BIT is not set\n",
        "arch/x86/configs/tiny.config": "# CONFIG_SLOW is not set\n",
        "arch/arm64/Kconfig": ARCH_KCONFIG,
        "arch/arm64/configs/defconfig": "CONFIG_MODULES=y\nCONFIG_VIRTIO_BLK=m\n",
    }
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "linux")


@pytest.fixture
def fragment(tmp_path: Path) -> Path:
    path = tmp_path / "lkvm.config"
    path.write_text(LKVM)
    return path


def read_config(path: Path) -> dict[str, str]:
    """Symbol -> value of a .config; `is not set` reads as n."""
    values = {}
    for line in path.read_text().splitlines():
        if line.startswith("CONFIG_"):
            name, _, value = line.partition("=")
            values[name[len("CONFIG_"):]] = value
        elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
            values[line[len("# CONFIG_"):-len(" is not set")]] = "n"
    return values


def run(tree: Path, objtree: Path, fragment: Path, base: str = "auto"):
    results = kvmconfig.kvmconfig(tree, objtree, base, fragment)
    return read_config(objtree / ".config"), {o.name: o for o in results}


# --- the shim ----------------------------------------------------------------

def test_shim_reads_bare_modules_as_option_modules(tree: Path) -> None:
    kconf = kvmconfig.load_kconfig(tree, tree)
    modules = kconf.syms["MODULES"]
    assert kconf.modules is modules
    assert "modules" in modules.nodes[0].help.split()
    modules.set_value("y")
    kconf.syms["SCSI"].set_value("m")
    assert kconf.syms["SCSI"].str_value == "m"


def test_plain_kconfiglib_fails_where_the_shim_is_needed(tree: Path) -> None:
    # If kconfiglib ever learns the syntax itself, the shim can go.
    env = kvmconfig.kernel_env(tree)
    with (kvmconfig._kconfig_process_state(env, tree),
          pytest.raises(kconfig_compat.KconfigError, match="modules")):
        kconfig_compat.kconfiglib.Kconfig("Kconfig", warn_to_stderr=False)


def test_shim_still_fails_loudly_on_unknown_constructs(tree: Path) -> None:
    (tree / "Kconfig").write_text(TOP_KCONFIG.replace(
        'bool "Expert"', 'bool "Expert"\n\ttransitional'))
    with pytest.raises(kvmconfig.Error, match=r"Kconfig:12: .*transitional"):
        kvmconfig.load_kconfig(tree, tree)


# --- fragments and the tree ----------------------------------------------------

def test_read_fragment(tmp_path: Path) -> None:
    frag = tmp_path / "f.config"
    frag.write_text('# comment\nCONFIG_A=y\n# CONFIG_B is not set\n'
                    'CONFIG_C="x y"\nCONFIG_A=m\nCONFIG_D=0x10\n')
    assert kvmconfig.read_fragment(frag) == {
        "A": "m", "B": "n", "C": "x y", "D": "0x10"}


def test_lkvm_fragment_has_what_lkvm_devices_need() -> None:
    wanted = kvmconfig.read_fragment(kvmconfig.LKVM_FRAGMENT)
    for name in ("VIRTIO_MMIO_CMDLINE_DEVICES", "VIRTIO_BALLOON",
                 "HW_RANDOM_VIRTIO", "9P_FS_POSIX_ACL", "NET_9P_VIRTIO",
                 "SERIAL_8250_CONSOLE", "DEVTMPFS_MOUNT", "BLK_DEV_INITRD",
                 "X86_MPPARSE", "BINFMT_SCRIPT", "64BIT"):
        assert wanted[name] == "y"


def test_arm64_fragment_asks_for_all_but_x86s_own() -> None:
    """lkvm-arm64.config repeats lkvm.config's devices; they must not drift."""
    x86_only = {"X86_MPPARSE", "VIRTIO_MMIO_CMDLINE_DEVICES"}
    x86 = kvmconfig.read_fragment(kvmconfig.ARCHES["x86"].fragment)
    arm64 = kvmconfig.read_fragment(kvmconfig.ARCHES["arm64"].fragment)
    assert {k: v for k, v in x86.items() if k not in x86_only}.items() <= arm64.items()
    for name in ("SERIAL_OF_PLATFORM", "RTC_DRV_PL031", "PCI_HOST_GENERIC", "ARM_GIC_V3"):
        assert arm64[name] == "y"


def test_find_srctree_walks_up_from_lkvm(tree: Path) -> None:
    lkvm = tree / "tools" / "kvm"
    lkvm.mkdir(parents=True)
    assert kvmconfig.find_srctree(None, lkvm) == tree.resolve()
    assert kvmconfig.find_srctree(str(tree), Path("/")) == tree.resolve()


def test_find_srctree_errors(tmp_path: Path) -> None:
    with pytest.raises(kvmconfig.Error, match="no Kconfig"):
        kvmconfig.find_srctree(str(tmp_path), tmp_path)
    with pytest.raises(kvmconfig.Error, match="KERNEL="):
        kvmconfig.find_srctree(None, tmp_path)


def test_kernel_version(tree: Path) -> None:
    assert kvmconfig.kernel_version(tree) == "6.1.9-test"


# --- building the configuration ----------------------------------------------

def test_defconfig_base_applies_both_fragments(tree: Path, fragment: Path,
                                               tmp_path: Path) -> None:
    values, results = run(tree, tmp_path / "out", fragment)
    assert values["SCSI"] == "m"  # from defconfig
    assert values["VIRTIO_BLK"] == "y" and values["VIRTIO"] == "y"
    assert values["VIRTIO_NET"] == "y" and values["64BIT"] == "y"
    assert not (tree / ".config").exists()  # O= honoured
    assert results["SCSI_VIRTIO"].got == "m"
    assert results["SCSI_VIRTIO"].why == "depends on SCSI [=m]"
    assert results["S390_GUEST"].got is None
    assert results["S390_GUEST"].why == "not defined for ARCH=x86"
    assert all(results[n].ok for n in ("VIRTIO_BLK", "VIRTIO_NET", "EPOLL"))


def test_arm64_from_its_defconfig(tree: Path, fragment: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    arm64 = kvmconfig.arch_named("arm64")
    results = kvmconfig.kvmconfig(tree, out, "defconfig", fragment, arm64)
    values = read_config(out / ".config")
    assert values["VIRTIO_BLK"] == "y"      # arm64's defconfig said m, kvm_guest y
    assert values["SCSI"] == "n"            # x86's defconfig set m
    assert "Linux/arm64 " in (out / ".config").read_text()
    assert {o.name: o for o in results}["S390_GUEST"].why == "not defined for ARCH=arm64"
    assert kvmconfig.arch_named("x86_64") is kvmconfig.ARCHES["x86"]


def test_tinyconfig_base(tree: Path, fragment: Path, tmp_path: Path) -> None:
    values, results = run(tree, tmp_path / "out", fragment, "tinyconfig")
    assert values["EMBEDDED"] == "y" and values["EXPERT"] == "y"
    assert values["SLOW"] == "n"  # arch/x86/configs/tiny.config
    assert values["64BIT"] == "y"  # tiny.config said n, lkvm.config wins
    assert values["EPOLL"] == "y"
    assert results["SCSI_VIRTIO"].why == "depends on SCSI [=n]"


def test_explains_prompt_conditions_and_select_only(tree: Path,
                                                    tmp_path: Path) -> None:
    frag = tmp_path / "want.config"
    frag.write_text("CONFIG_EPOLL=n\nCONFIG_VIRTIO=y\n")
    (tree / "kernel/configs/kvm_guest.config").unlink()
    _, results = run(tree, tmp_path / "out", frag)
    assert results.keys() == {"EPOLL", "VIRTIO"}
    assert results["EPOLL"].why == "its prompt needs EXPERT [=n]"
    assert results["VIRTIO"].why == "has no prompt and nothing selects it"


def test_runs_twice_without_change(tree: Path, fragment: Path,
                                   tmp_path: Path) -> None:
    out = tmp_path / "out"
    run(tree, out, fragment, "tinyconfig")
    first = (out / ".config").read_bytes()
    mtime = (out / ".config").stat().st_mtime_ns
    run(tree, out, fragment)  # base: the .config just written
    assert (out / ".config").read_bytes() == first
    assert (out / ".config").stat().st_mtime_ns == mtime
    umask = os.umask(0)
    os.umask(umask)
    assert (out / ".config").stat().st_mode & 0o777 == 0o666 & ~umask
    assert sorted(p.name for p in out.iterdir()) == [".config"]


def test_config_is_never_half_written(tmp_path: Path) -> None:
    config = tmp_path / ".config"
    config.write_text("CONFIG_OLD=y\n")

    class Failing:
        mainmenu_text = "Linux"

        def write_config(self, filename: str, **_: object) -> None:
            Path(filename).write_text("CONFIG_HALF")
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        kvmconfig.write_atomically(Failing(), config)
    assert config.read_text() == "CONFIG_OLD=y\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".config"]


# --- the command line ----------------------------------------------------------

def test_strict_fails_only_for_lkvm_options(tree: Path, tmp_path: Path,
                                            capsys) -> None:
    # The real lkvm.config asks for options this small tree lacks.
    argv = ["--srctree", str(tree), "-O", str(tmp_path / "o")]
    assert kvmconfig.main(argv) == 0
    assert kvmconfig.main([*argv, "--strict"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("lkvm kvmconfig: ") and "did not stick" in err


def test_strict_passes_when_lkvm_options_stick(tree: Path,
                                               tmp_path: Path) -> None:
    # Define every option of the real lkvm.config in the small tree.
    defined = {"64BIT", "EPOLL", "VIRTIO", "VIRTIO_BLK", "VIRTIO_NET"}
    names = kvmconfig.read_fragment(kvmconfig.LKVM_FRAGMENT).keys() - defined
    kconfig = TOP_KCONFIG + "".join(f'config {n}\n\tbool "{n}"\n'
                                    for n in sorted(names))
    make_tree(tree, kconfig)
    argv = ["--srctree", str(tree), "-O", str(tmp_path / "o"), "--strict"]
    assert kvmconfig.main(argv) == 0


@pytest.mark.parametrize("case", ["no-kconfig", "parse-error", "bad-objtree",
                                  "bad-base", "bad-arch"])
def test_bad_input_is_one_line_and_nonzero(case: str, tree: Path,
                                           tmp_path: Path) -> None:
    argv = ["--srctree", str(tree), "-O", str(tmp_path / "o")]
    expect = {"no-kconfig": "no Kconfig", "parse-error": "Kconfig:3:",
              "bad-objtree": "cannot write to", "bad-base": "unknown --base",
              "bad-arch": "lkvm boots no ARCH=mips (one of: x86, arm64)"}
    if case == "no-kconfig":
        argv[1] = str(tmp_path)
    elif case == "parse-error":
        (tree / "Kconfig").write_text('mainmenu "x"\n\nfrobnicate FOO\n')
    elif case == "bad-objtree":
        (tmp_path / "file").write_text("")
        argv[3] = str(tmp_path / "file" / "o")
    elif case == "bad-base":
        argv += ["--base", "allyesconfig"]
    else:
        argv += ["--arch", "mips"]
    proc = subprocess.run([sys.executable, str(SCRIPTS / "kvmconfig.py"),
                           *argv], capture_output=True, text=True, check=False)
    assert proc.returncode != 0
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("lkvm kvmconfig: ")
    assert expect[case] in proc.stderr


# What lkvm's arm64 machine needs built in for a console, its interrupts and
# timer, its CPUs, the 9p root and its devices, on either base.
ARM64_BUILT_IN = ("SERIAL_OF_PLATFORM", "SERIAL_8250_CONSOLE", "ARM_GIC_V3", "ARM_GIC",
                  "ARM_ARCH_TIMER", "ARM_PSCI_FW", "RTC_DRV_PL031", "PCI_HOST_GENERIC",
                  "VIRTIO_MMIO", "VIRTIO_PCI", "NET_9P_VIRTIO", "9P_FS", "VIRTIO_BLK",
                  "VIRTIO_CONSOLE", "HW_RANDOM_VIRTIO", "VIRTIO_BALLOON", "DEVTMPFS")


@pytest.mark.parametrize("base", ["defconfig", "tinyconfig"])
def test_arm64_config_from_the_real_tree(base: str, tmp_path: Path) -> None:
    """`make kvmconfig ARCH=arm64` on Debian's linux-source: every option of
    lkvm-arm64.config sticks (what --strict checks) and the machine's
    drivers are built in, not modules lkvm could not load."""
    tree = _linux_source()
    if tree is None:
        pytest.skip("no unpacked linux-source tree (run make guest-kernel)")
    out = tmp_path / "arm64"
    argv = ["--srctree", str(tree), "-O", str(out), "--arch", "arm64", "--base", base]
    assert kvmconfig.main([*argv, "--strict"]) == 0
    values = read_config(out / ".config")
    assert values["ARM64"] == "y" and "X86" not in values
    assert [n for n in ARM64_BUILT_IN if values.get(n) != "y"] == []


# --- make guest-kernel --------------------------------------------------------

def test_guest_kernel_unpacks_once_per_version(tmp_path: Path) -> None:
    src = tmp_path / "linux-source-9.9"
    src.mkdir()
    (src / "Kconfig").write_text("")
    tarball = tmp_path / "linux-source-9.9.tar.xz"
    subprocess.run(["tar", "-cJf", str(tarball), "-C", str(tmp_path),
                    src.name], check=True)
    cache = tmp_path / "cache"
    tree = guest_kernel.unpack(tarball, "9.9-1", cache)
    assert tree == cache / src.name and (tree / "Kconfig").is_file()
    (tree / "marker").write_text("")
    assert guest_kernel.unpack(tarball, "9.9-1", cache) == tree
    assert (tree / "marker").exists()  # reused, not unpacked again
    guest_kernel.unpack(tarball, "9.9-2", cache)
    assert not (tree / "marker").exists()
    assert sorted(p.name for p in cache.iterdir()) == [src.name]


def test_guest_kernel_key_follows_the_fragments(tree: Path) -> None:
    first = guest_kernel.fragment_hash(tree)
    assert guest_kernel.fragment_hash(tree) == first
    (tree / "kernel/configs/kvm_guest.config").write_text("CONFIG_X=y\n")
    assert guest_kernel.fragment_hash(tree) != first


def test_guest_kernel_wants_virtio_and_9p_built_in(tmp_path: Path) -> None:
    config = tmp_path / ".config"
    config.write_text("".join(f"CONFIG_{n}=y\n"
                              for n in guest_kernel.BUILT_IN))
    guest_kernel.check_built_in(config)
    config.write_text(config.read_text().replace("CONFIG_9P_FS=y",
                                                 "CONFIG_9P_FS=m"))
    with pytest.raises(guest_kernel.Error, match="9P_FS"):
        guest_kernel.check_built_in(config)


# --- against the kernel's C kconfig (slow) -----------------------------------

def _linux_source() -> Path | None:
    cache = Path(os.environ.get("LKVM_CACHE",
                                Path.home() / ".cache" / "lkvm"))
    tree = Path(os.environ.get("LKVM_LINUX_SRC",
                               cache / "src" / "linux-source-6.1"))
    usable = (tree / "Kconfig").is_file() and shutil.which("make")
    return tree if usable else None


def _c_kconfig(tree: Path, objtree: Path, base: str) -> dict[str, str]:
    """`make <base> kvm_guest.config`, then lkvm.config merged the same way."""
    def make(*targets: str) -> None:
        subprocess.run(["make", "-s", "-C", str(tree), f"O={objtree}",
                        *targets], check=True, capture_output=True)

    make(base, "kvm_guest.config")
    subprocess.run([str(tree / "scripts/kconfig/merge_config.sh"), "-m",
                    ".config", str(kvmconfig.LKVM_FRAGMENT)], cwd=objtree,
                   check=True, capture_output=True)
    make("olddefconfig")
    return read_config(objtree / ".config")


@pytest.mark.slow
@pytest.mark.parametrize("base", ["defconfig", "tinyconfig"])
def test_matches_the_kernels_c_kconfig(base: str, tmp_path: Path) -> None:
    tree = _linux_source()
    if tree is None:
        pytest.skip("no unpacked linux-source tree (run make guest-kernel)")
    c_values = _c_kconfig(tree, tmp_path / "c", base)
    py_values, results = run(tree, tmp_path / "py", kvmconfig.LKVM_FRAGMENT,
                             base)
    guest = kvmconfig.read_fragment(tree / kvmconfig.KVM_GUEST_FRAGMENT)
    for name in [*guest, *kvmconfig.read_fragment(kvmconfig.LKVM_FRAGMENT)]:
        assert py_values.get(name, "n") == c_values.get(name, "n"), name
    # Not only the fragments' symbols: the whole configuration agrees.
    differ = {n for n in c_values.keys() | py_values.keys()
              if c_values.get(n, "n") != py_values.get(n, "n")}
    assert differ == set()
    assert all(o.ok for o in results.values()
               if o.fragment == kvmconfig.LKVM_FRAGMENT.name)
