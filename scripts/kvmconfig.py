#!/usr/bin/env python3
"""Write a kernel .config that boots under lkvm.

Loads a kernel tree's Kconfig with kconfiglib, starts from the tree's
.config (or defconfig, or tinyconfig), applies the kernel's own
kernel/configs/kvm_guest.config and then lkvm's scripts/lkvm.config, and
reports which requested options could not be set and why.

Each step mirrors one run of the kernel's C tools (`make defconfig`,
`make kvm_guest.config`, ...): the configuration is written out and read
back between steps, so the result equals what those tools would produce.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import kconfiglib

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kconfig_compat

PROG = "lkvm kvmconfig"
LKVM_TOP = Path(__file__).resolve().parent.parent
LKVM_FRAGMENT = LKVM_TOP / "scripts" / "lkvm.config"
KVM_GUEST_FRAGMENT = Path("kernel/configs/kvm_guest.config")
# "auto" is the tree's .config when there is one, else defconfig.
BASES = ("auto", "config", "defconfig", "tinyconfig")


@dataclass(frozen=True)
class Arch:
    """What differs between the arches lkvm boots: the kernel's name for
    it (ARCH=, arch/<name>), its 64-bit defconfig, lkvm's fragment for it,
    and the cross compiler's prefix Kconfig probes with from another host
    (Debian's, which make installs for arm64)."""

    name: str
    defconfig: str
    fragment: Path
    cross: str


ARCHES = {
    "x86": Arch("x86", "x86_64_defconfig", LKVM_FRAGMENT, "x86_64-linux-gnu-"),
    "arm64": Arch("arm64", "defconfig", LKVM_TOP / "scripts" / "lkvm-arm64.config",
                  "aarch64-linux-gnu-"),
}
# Other names the kernel's make takes, and `uname -m`'s.
ARCH_NAMES = {"x86_64": "x86", "aarch64": "arm64"}


def arch_named(name: str) -> Arch:
    arch = ARCHES.get(ARCH_NAMES.get(name, name))
    if arch is None:
        raise Error(f"lkvm boots no ARCH={name} (one of: {', '.join(ARCHES)})")
    return arch


HOST = ARCHES.get(ARCH_NAMES.get(platform.machine(), ""), ARCHES["x86"])

_ASSIGNMENT = re.compile(r"^CONFIG_(\w+)=(.*)$")
_UNSET = re.compile(r"^# CONFIG_(\w+) is not set$")


class Error(Exception):
    """A problem reported as one line on stderr, without a traceback."""


@dataclass
class Outcome:
    """What became of one option a fragment asked for."""

    fragment: str
    name: str
    wanted: str
    got: str | None  # None: the tree does not define the symbol
    why: str = ""

    @property
    def ok(self) -> bool:
        return self.got == self.wanted


# --- finding the tree ------------------------------------------------------

def is_kernel_tree(path: Path) -> bool:
    return (path / "Kconfig").is_file() and (path / "arch" / "x86").is_dir()


def find_srctree(explicit: str | None, start: Path = LKVM_TOP) -> Path:
    """The tree given on the command line, else the kernel checkout lkvm
    sits in (the first directory above it with Kconfig and arch/x86, which
    every kernel tree has)."""
    if explicit:
        tree = Path(explicit)
        if not (tree / "Kconfig").is_file():
            raise Error(f"{tree}: no Kconfig there, not a kernel tree")
        return tree.resolve()
    start = start.resolve()
    for parent in (start, *start.parents):
        if is_kernel_tree(parent):
            return parent
    raise Error(f"no kernel tree around {start}; "
                "give one with KERNEL=<dir> or --srctree <dir>")


def kernel_version(srctree: Path) -> str:
    """VERSION.PATCHLEVEL.SUBLEVEL+EXTRAVERSION from the top Makefile."""
    try:
        text = (srctree / "Makefile").read_text(errors="replace")
    except OSError:
        return ""
    fields = dict(re.findall(r"^(VERSION|PATCHLEVEL|SUBLEVEL|EXTRAVERSION)"
                             r"\s*=[ \t]*(\S*)", text, re.MULTILINE))
    numbers = [fields.get(k, "") for k in ("VERSION", "PATCHLEVEL", "SUBLEVEL")]
    return ".".join(n for n in numbers if n) + fields.get("EXTRAVERSION", "")


def kernel_env(srctree: Path, arch: Arch = HOST) -> dict[str, str]:
    """The variables the kernel's Makefile exports to its Kconfig.

    Kconfig probes the toolchain with $(shell,$(CC) ...), so tool names
    the user set (CC=clang, CROSS_COMPILE=...) are kept, as the kernel's
    make would; for another arch than the host's, its cross compiler.
    """
    host = HOST.name
    env = {"srctree": str(srctree), "ARCH": arch.name, "SRCARCH": arch.name,
           "SUBARCH": host, "KERNELVERSION": kernel_version(srctree)}
    cross = os.environ.get("CROSS_COMPILE", "" if arch is HOST else arch.cross)
    tools = {"CC": f"{cross}gcc", "LD": f"{cross}ld", "NM": f"{cross}nm",
             "OBJCOPY": f"{cross}objcopy",
             "HOSTCC": "gcc", "HOSTCXX": "g++", "RUSTC": "rustc",
             "BINDGEN": "bindgen", "PAHOLE": "pahole", "CLANG_FLAGS": "",
             "USERCFLAGS": "", "USERLDFLAGS": ""}
    for name, default in tools.items():
        env[name] = os.environ.get(name, default)
    env["CC_VERSION_TEXT"] = _cc_version_text(env["CC"])
    return env


def _cc_version_text(cc: str) -> str:
    # Same as the kernel's Makefile: first line of `$(CC) --version`, '#'
    # removed.  init/Kconfig fails loudly when this is empty.
    try:
        out = subprocess.run([cc, "--version"], capture_output=True,
                             text=True, check=False, env={**os.environ, "LC_ALL": "C"}).stdout
    except OSError:
        return ""
    return out.partition("\n")[0].replace("#", "")


@contextlib.contextmanager
def _kconfig_process_state(env: dict[str, str], cwd: Path) -> Iterator[None]:
    # kconfiglib reads the environment and runs $(shell) in the current
    # directory; the kernel runs it in the (writable) object tree.
    saved_env = {k: os.environ.get(k) for k in env}
    saved_cwd = os.getcwd()
    os.environ.update(env)
    os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(saved_cwd)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def load_kconfig(srctree: Path, objtree: Path, arch: Arch = HOST) -> kconfiglib.Kconfig:
    with _kconfig_process_state(kernel_env(srctree, arch), objtree):
        try:
            return kconfig_compat.Kconfig("Kconfig", warn_to_stderr=False)
        except kconfiglib.KconfigError as e:
            msg = " ".join(str(e).split())
            raise Error(f"cannot parse the Kconfig of {srctree}: {msg}") from e
        except OSError as e:
            raise Error(f"cannot read the Kconfig of {srctree}: {e}") from e


# --- building the configuration -------------------------------------------

def read_fragment(path: Path) -> dict[str, str]:
    """Option name (without CONFIG_) -> value, as merge_config.sh reads a
    fragment: the last assignment wins, `# CONFIG_X is not set` means n."""
    wanted: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if m := _ASSIGNMENT.match(line):
            wanted[m[1]] = m[2].strip('"') if m[2].startswith('"') else m[2]
        elif m := _UNSET.match(line):
            wanted[m[1]] = "n"
    return wanted


def _load(kconf: kconfiglib.Kconfig, path: Path, replace: bool) -> None:
    try:
        kconf.load_config(str(path), replace=replace)
    except OSError as e:
        raise Error(f"cannot read {path}: {e.strerror}") from e


def _checkpoint(kconf: kconfiglib.Kconfig, scratch: Path) -> None:
    # Between two `make` steps the C tools write .config and read it back,
    # which turns every written value into a user value.  Doing the same
    # keeps kconfiglib's result equal to theirs.
    step = scratch / "step.config"
    kconf.write_config(str(step), save_old=False)
    _load(kconf, step, replace=True)


def merge(kconf: kconfiglib.Kconfig, fragments: list[Path],
          scratch: Path) -> None:
    """`merge_config.sh -m .config FRAGMENTS && make olddefconfig`."""
    for fragment in fragments:
        _load(kconf, fragment, replace=False)
    _checkpoint(kconf, scratch)


def _arch_fragments(srctree: Path, name: str, arch: Arch) -> list[Path]:
    # Where the kernel's `make <name>.config` looks for fragments.
    candidates = [srctree / "kernel" / "configs" / name,
                  srctree / "arch" / arch.name / "configs" / name]
    return [p for p in candidates if p.is_file()]


def defconfig(kconf: kconfiglib.Kconfig, srctree: Path, scratch: Path,
              arch: Arch = HOST) -> None:
    """`make defconfig`, for a 64-bit kernel."""
    _load(kconf, srctree / "arch" / arch.name / "configs" / arch.defconfig,
          replace=True)
    _checkpoint(kconf, scratch)


def tinyconfig(kconf: kconfiglib.Kconfig, srctree: Path, scratch: Path,
               arch: Arch = HOST) -> None:
    """`make tinyconfig`: allnoconfig with tiny-base.config, then tiny.config."""
    kconf.warn = False  # n is invalid for string/int symbols: ignored, fine
    for sym in kconf.unique_defined_syms:
        sym.set_value(2 if sym.is_allnoconfig_y else 0)
    kconf.warn = True
    merge(kconf, _arch_fragments(srctree, "tiny-base.config", arch), scratch)
    merge(kconf, _arch_fragments(srctree, "tiny.config", arch), scratch)


def apply_base(kconf: kconfiglib.Kconfig, base: str, srctree: Path,
               config: Path, scratch: Path, arch: Arch = HOST) -> str:
    """Set up the starting configuration; returns what it was."""
    if base == "auto":
        base = "config" if config.is_file() else "defconfig"
    if base == "config":
        _load(kconf, config, replace=True)
        return str(config)
    if base == "defconfig":
        defconfig(kconf, srctree, scratch, arch)
    else:
        tinyconfig(kconf, srctree, scratch, arch)
    return base


def fragments_for(srctree: Path, lkvm_fragment: Path) -> list[Path]:
    """kvm_guest.config when the tree has one, then lkvm's own fragment."""
    kvm_guest = srctree / KVM_GUEST_FRAGMENT
    return [kvm_guest, lkvm_fragment] if kvm_guest.is_file() else [lkvm_fragment]


# --- explaining the result -------------------------------------------------

def _with_value(sc: kconfiglib.Symbol | kconfiglib.Choice) -> str:
    if isinstance(sc, kconfiglib.Symbol) and not sc.is_constant:
        return f"{sc.name} [={sc.str_value}]"
    return kconfiglib.standard_sc_expr_str(sc)


def _unmet(expr: object, need: int) -> str:
    """The conjuncts of `expr` whose value is below `need`, with values."""
    parts = [p for p in kconfiglib.split_expr(expr, kconfiglib.AND)
             if kconfiglib.expr_value(p) < need]
    return " && ".join(kconfiglib.expr_str(p, _with_value) for p in parts)


def explain(sym: kconfiglib.Symbol, wanted: str) -> str:
    """Why `sym` did not get the value `wanted`, as kconfiglib sees it."""
    need = kconfiglib.STR_TO_TRI.get(wanted, 0)
    if need and kconfiglib.expr_value(sym.direct_dep) < need:
        return "depends on " + _unmet(sym.direct_dep, need)
    prompts = [n.prompt for n in sym.nodes if n.prompt]
    if not prompts:
        if need and kconfiglib.expr_value(sym.rev_dep) < need:
            return "has no prompt and nothing selects it"
        return "has no prompt; only select or its default can set it"
    # Even n needs a visible prompt: an invisible symbol keeps its default.
    visible_at = max(need, 1)
    if sym.visibility < visible_at:
        conds = [_unmet(cond, visible_at) for _, cond in prompts]
        return "its prompt needs " + " || ".join(c for c in conds if c)
    if need and sym.choice and sym.choice.selection is not sym:
        chosen = sym.choice.selection
        return f"its choice selected {chosen.name if chosen else 'nothing'}"
    if not need and sym.rev_dep is not sym.kconfig.n:
        return "selected by " + kconfiglib.expr_str(sym.rev_dep, _with_value)
    return f"kconfiglib gave it {sym.str_value!r}"


def outcomes(kconf: kconfiglib.Kconfig, fragments: list[Path],
             arch: Arch = HOST) -> list[Outcome]:
    result = []
    for fragment in fragments:
        for name, wanted in read_fragment(fragment).items():
            sym = kconf.syms.get(name)
            if sym is None or not sym.nodes:
                result.append(Outcome(fragment.name, name, wanted, None,
                                      f"not defined for ARCH={arch.name}"))
                continue
            outcome = Outcome(fragment.name, name, wanted, sym.str_value)
            if not outcome.ok:
                outcome.why = explain(sym, wanted)
            result.append(outcome)
    return result


def report(results: list[Outcome], fragments: list[Path]) -> str:
    lines = []
    for fragment in fragments:
        mine = [o for o in results if o.fragment == fragment.name]
        done = [o.name for o in mine if o.ok]
        lines.append(f"  {fragment.name}: {len(done)} of {len(mine)} set")
        lines += textwrap.wrap(" ".join(done), 76, initial_indent="    ",
                               subsequent_indent="    ")
    failed = [o for o in results if not o.ok]
    if failed:
        lines.append("  not set:")
    for o in failed:
        got = "undefined" if o.got is None else f"is {o.got or 'unset'}"
        lines.append(f"    CONFIG_{o.name}={o.wanted} ({o.fragment}): "
                     f"{got}, {o.why}")
    return "\n".join(lines)


# --- writing ---------------------------------------------------------------

def write_atomically(kconf: kconfiglib.Kconfig, config: Path) -> bool:
    """Write .config through a temporary file and rename it into place, so
    an interrupted run never leaves half a .config.  Returns False when the
    file already had this content (and was left alone)."""
    header = ("#\n# Automatically generated file; DO NOT EDIT.\n"
              f"# {kconf.mainmenu_text}\n#\n")
    fd, tmp = tempfile.mkstemp(prefix=".config.", dir=config.parent)
    os.close(fd)
    # mkstemp makes the file private; a .config is as readable as any
    # file the user creates.
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        kconf.write_config(tmp, header=header, save_old=False)
        if config.is_file() and config.read_bytes() == Path(tmp).read_bytes():
            return False
        os.replace(tmp, config)
        return True
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def prepare_objtree(objtree: Path) -> None:
    try:
        objtree.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=objtree):
            pass
    except OSError as e:
        raise Error(f"cannot write to {objtree}: {e.strerror}") from e


def kvmconfig(srctree: Path, objtree: Path, base: str,
              lkvm_fragment: Path | None = None, arch: Arch = HOST) -> list[Outcome]:
    """Build and write objtree/.config for `arch` (with its lkvm fragment
    unless given another); returns the per-option outcomes."""
    prepare_objtree(objtree)
    config = objtree / ".config"
    kconf = load_kconfig(srctree, objtree, arch)
    fragments = fragments_for(srctree, lkvm_fragment or arch.fragment)
    with tempfile.TemporaryDirectory(prefix="kvmconfig.") as scratch:
        started = apply_base(kconf, base, srctree, config, Path(scratch), arch)
        # One `make` step per fragment, as `make kvm_guest.config` would.
        for fragment in fragments[:-1]:
            merge(kconf, [fragment], Path(scratch))
        _load(kconf, fragments[-1], replace=False)
    results = outcomes(kconf, fragments, arch)
    try:
        changed = write_atomically(kconf, config)
    except OSError as e:
        raise Error(f"cannot write {config}: {e.strerror}") from e
    state = "written" if changed else "unchanged"
    print(f"{PROG}: {config} {state} (base: {started}, "
          f"{kconf.mainmenu_text})")
    print(report(results, fragments))
    return results


# --- command line ----------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, like every other error of this tool.
        self.exit(2, f"{PROG}: {message}\n")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = _Parser(prog="kvmconfig.py", description=__doc__.split("\n")[0])
    p.add_argument("--srctree", default=os.environ.get("KERNEL") or None,
                   help="kernel tree (default: $KERNEL, else the kernel "
                        "checkout around lkvm)")
    p.add_argument("-O", "--objtree",
                   help="where .config goes, like the kernel's O= "
                        "(default: the kernel tree)")
    p.add_argument("--base", default="auto",
                   help="starting point: auto (the existing .config, else "
                        "defconfig), config, defconfig or tinyconfig")
    p.add_argument("--arch", default=HOST.name,
                   help="the kernel's ARCH: x86 or arm64 (default: the host's)")
    p.add_argument("--strict", action="store_true",
                   help="fail when an option of lkvm.config did not stick")
    args = p.parse_args(argv)
    if args.base not in BASES:
        p.error(f"unknown --base {args.base!r} (one of: {', '.join(BASES)})")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        arch = arch_named(args.arch)
        srctree = find_srctree(args.srctree)
        objtree = Path(args.objtree).resolve() if args.objtree else srctree
        results = kvmconfig(srctree, objtree, args.base, arch=arch)
    except Error as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    missed = [o for o in results if o.fragment == arch.fragment.name
              and not o.ok]
    if args.strict and missed:
        print(f"{PROG}: {len(missed)} option(s) lkvm needs did not stick",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
