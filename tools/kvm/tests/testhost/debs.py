"""Debian packages fetched with `apt-get download` and unpacked into the cache.

Downloading needs no root and no dpkg lock, so this works while other
processes install packages, and never changes the host's installed set.
Packages of the host's architecture come through the host's apt. Those of
another architecture (the arm64 test host's), or of a suite apt is not
configured for (backports), come through a private apt state under the
cache: the host's Debian sources (for a suite: its main mirror with that
suite), that architecture alone and an empty dpkg status, so the host's
apt configuration stays as it is.
"""

import functools
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from . import cache
from .cache import TestHostError

# Where the host's apt names its Debian mirror; the private state copies it.
SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
# Suites beside the host's own, as a suffix of its codename; "" is the host's.
BACKPORTS = "backports"

# Needed only to install a package, never to run one: python3-minimal
# depends on dpkg for its maintainer scripts, and dpkg would bring perl.
_INSTALL_ONLY = frozenset({"dpkg"})

T = TypeVar("T", bound=Any)


def _run(*args: str, cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(
            args, cwd=cwd, check=False, capture_output=True, text=True, timeout=600
        )
    except FileNotFoundError as e:
        raise TestHostError(
            f"{args[0]} not found: the test host needs Debian's apt"
        ) from e
    if done.returncode:
        raise TestHostError(f"{' '.join(args)} failed:\n{done.stderr.strip()}")
    return done.stdout


@functools.cache
def host_arch() -> str:
    return _run("dpkg", "--print-architecture").strip()


def _private_options(state: Path, arch: str) -> tuple[str, ...]:
    """apt options for a package list of `arch` alone, kept in `state`."""
    return (
        f"-oAPT::Architecture={arch}", f"-oAPT::Architectures={arch}",
        f"-oDir::State::Lists={state / 'lists'}", f"-oDir::State::status={state / 'status'}",
        f"-oDir::Cache={state / 'cache'}", "-oDir::Cache::pkgcache=pkgcache.bin",
        "-oDir::Cache::srcpkgcache=srcpkgcache.bin",
        "-oDir::Etc::SourceList=/dev/null", f"-oDir::Etc::SourceParts={state / 'sources'}",
        "-oDir::Etc::Preferences=/dev/null", f"-oDir::Etc::PreferencesParts={state / 'sources'}",
    )  # fmt: skip


def _suite_sources(sources: str, suite: str) -> str:
    """The main Debian paragraph of deb822 `sources`, for `suite` of its codename."""
    for paragraph in sources.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in paragraph.splitlines() if ": " in line)
        suites = fields.get("Suites", "").split()
        if suites and "-" not in suites[0]:
            return "\n".join(
                f"Suites: {suites[0]}-{suite}" if line.startswith("Suites:") else line
                for line in paragraph.splitlines()
            ) + "\n"
    raise TestHostError(f"{SOURCES} names no main Debian suite to take {suite} from")


@functools.cache
def _state(arch: str, suite: str = "") -> Path | None:
    """The private apt state for `arch` and `suite` (None for the host's
    own), made (its lists fetched) on first use."""
    if arch == host_arch() and not suite:
        return None
    if not SOURCES.exists():
        raise TestHostError(f"{SOURCES} not found: no Debian mirror to fetch {arch} packages from")
    sources = SOURCES.read_text()
    if suite:
        sources = _suite_sources(sources, suite)

    def make(tmp: Path) -> None:
        for d in ("lists/partial", "cache/archives/partial", "sources", "memo"):
            (tmp / d).mkdir(parents=True)
        (tmp / "status").touch()
        (tmp / "sources" / SOURCES.name).write_text(sources)
        try:
            _run("apt-get", *_private_options(tmp, arch), "-q", "update")
        except TestHostError as e:
            # A mirror serves one suite's index broken now and then (seen:
            # bookworm-security's ppc64el Packages, short of its Release
            # size); the others still have every package the hosts fetch.
            if not any((tmp / "lists").glob(f"*_binary-{arch}_Packages*")):
                raise
            print(f"testhost: some {arch} package lists are missing:\n{e}", file=sys.stderr)

    name = f"{arch}{suite and '-'}{suite}-{cache.digest(arch, sources)}"
    return cache.build(cache.root() / "apt" / name, make)


def _options(arch: str, suite: str = "") -> tuple[str, ...]:
    state = _state(arch, suite)
    return () if state is None else _private_options(state, arch)


def _refresh(arch: str, suite: str) -> None:
    """Fetch `arch`'s package lists again (a mirror drops superseded
    versions) and forget what was looked up in the old ones."""
    state = _state(arch, suite)
    assert state is not None, "the host's lists are the host's to update"
    _run("apt-get", *_options(arch, suite), "-q", "update")
    for memo in (state / "memo").iterdir():
        memo.unlink()
    _resolved.cache_clear()


def _memo(arch: str, suite: str, query: list[str], look_up: Callable[[], T]) -> T:
    """`look_up()`, kept in the private state's memo for the same `query`:
    each apt-cache call costs a second there. The host's lists change under
    us, so its answers are not kept."""
    state = _state(arch, suite)
    if state is None:
        return look_up()
    path = state / "memo" / cache.digest(*query)
    if not path.exists():
        cache.build(path, lambda tmp: tmp.write_text(json.dumps(look_up())))
    return json.loads(path.read_text())


def _paragraphs(text: str) -> dict[str, dict[str, str]]:
    """apt-cache show's output as package name -> fields (continuation lines dropped)."""
    found = {}
    for paragraph in text.split("\n\n"):
        fields = dict(
            line.split(": ", 1)
            for line in paragraph.splitlines()
            if ": " in line and not line[0].isspace()
        )
        if "Package" in fields:
            found.setdefault(fields["Package"], fields)
    return found


def _show(names: list[str], arch: str, suite: str = "") -> dict[str, dict[str, str]]:
    """The candidate versions' fields of those of `names` apt knows (others,
    and purely virtual ones, are left out)."""
    done = subprocess.run(
        ["apt-cache", *_options(arch, suite), "show", "--no-all-versions", *names],
        check=False, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    found = _paragraphs(done.stdout)
    if done.returncode and not found:
        raise TestHostError(f"apt-cache show failed:\n{done.stderr.strip()}")
    return found


# What the test hosts fetch by name, per architecture: x86's L1 kernel, its
# L2 guests' kernel and busybox, and a QEMU from another suite (qemu.py);
# arm64's and ppc64el's L1 kernel, busybox, and what their bindings are
# cross-built from. Each architecture's names
# are looked up in one apt-cache call: that can take seconds on the host.
PACKAGES = {
    "amd64": ("linux-image-amd64", "linux-image-cloud-amd64", "busybox-static",
              "qemu-system-x86", "qemu-system-common", "qemu-system-data", "seabios"),
    "arm64": ("linux-image-arm64", "busybox-static", "linux-libc-dev", "libpython3.11-dev"),
    "ppc64el": ("linux-image-powerpc64le", "busybox-static", "linux-libc-dev",
                "libpython3.11-dev"),
}


@functools.cache
def _resolved(arch: str, suite: str) -> dict[str, tuple[str, str]]:
    names = PACKAGES[arch]
    found = _memo(arch, suite, ["resolve", *names], lambda: _resolve(names, arch, suite))
    return {name: (package, version) for name, (package, version) in found.items()}


def resolve(name: str, arch: str, suite: str = "") -> tuple[str, str]:
    """(package to download, its version) for `name`, one of PACKAGES[arch],
    in `suite` (the host's own by default); a kernel metapackage stands for
    the versioned image package it depends on, so a kernel update in apt
    makes a new cache entry."""
    try:
        return _resolved(arch, suite)[name]
    except KeyError:
        raise TestHostError(f"apt knows no {name} in {suite}") from None


def _resolve(names: tuple[str, ...], arch: str, suite: str) -> dict[str, tuple[str, str]]:
    shown = _show(list(names), arch, suite)
    missing = [n for n in names if n not in shown]
    if missing and not suite:  # a suite beside the host's has only some
        hint = "run apt-get update" if arch == host_arch() else f"no {arch} package"
        raise TestHostError(f"apt knows no {', '.join(missing)}: {hint}")
    found = {}
    for name in names:
        if name not in shown:
            continue
        fields = shown[name]
        found[name] = (name, fields["Version"])
        if name.startswith("linux-image-") and "Depends" in fields:
            image, _, version = fields["Depends"].split(",")[0].partition(" (= ")
            found[name] = (image.strip(), version.rstrip(")"))
    return found


def _alternatives(field: str) -> list[list[str]]:
    """A Depends field as lists of alternative package names."""
    return [
        [alt.split()[0].split(":")[0] for alt in dep.split("|")]
        for dep in field.split(",")
        if dep.strip()
    ]


def closure(roots: tuple[str, ...], arch: str) -> list[tuple[str, str]]:
    """`roots` and everything they need to run, as (package, version): the
    Pre-Depends and Depends of each, taking the first alternative apt has."""
    found = _memo(arch, "", ["closure", *roots], lambda: _closure(roots, arch))
    return [(package, version) for package, version in found]


def _closure(roots: tuple[str, ...], arch: str) -> list[tuple[str, str]]:
    known = _show(list(roots), arch)  # name -> fields, of all names seen
    missing = [n for n in roots if n not in known]
    if missing:
        raise TestHostError(f"apt knows no {arch} {', '.join(missing)}")
    absent: set[str] = set()  # names apt has no package for
    have: dict[str, str] = {}
    wanted = list(roots)
    while wanted:
        deps: list[list[str]] = []
        for name in wanted:
            have[name] = known[name]["Version"]
            for field in ("Pre-Depends", "Depends"):
                deps += _alternatives(known[name].get(field, ""))
        unseen = {n for alts in deps for n in alts} - known.keys() - absent - _INSTALL_ONLY
        if unseen:
            known |= _show(sorted(unseen), arch)
            absent |= unseen - known.keys()
        wanted = []
        for alts in deps:
            if any(a in have or a in _INSTALL_ONLY or a in wanted for a in alts):
                continue
            real = [a for a in alts if a in known]
            if not real:
                raise TestHostError(f"no {arch} package provides {' | '.join(alts)}")
            wanted.append(real[0])
    return sorted(have.items())


def _dest(package: str, version: str, arch: str) -> Path:
    # Host packages keep the names they always had; others carry their
    # architecture, as Debian's file names do.
    suffix = "" if arch == host_arch() else f"_{arch}"
    return cache.root() / "pkgs" / f"{package}_{version.replace(':', '%3a')}{suffix}"


def _download(pkgs: list[tuple[str, str]], arch: str, cwd: Path,
              suite: str = "") -> list[Path]:
    """Download `pkgs` (package, version) into `cwd`; the .deb files."""
    get = ["download", *(f"{p}={v}" for p, v in pkgs)]
    try:
        _run("apt-get", *_options(arch, suite), *get, cwd=cwd)
    except TestHostError:
        if _state(arch, suite) is None:
            raise
        _refresh(arch, suite)
        _run("apt-get", *_options(arch, suite), *get, cwd=cwd)
    return sorted(cwd.glob("*.deb"))


def _extract(debs: list[Path], dest: Path) -> None:
    """Unpack `debs` over each other into `dest`, as dpkg would install
    them, and remove them."""
    for deb in debs:
        _run("dpkg-deb", "-x", str(deb), str(dest))
        deb.unlink()


def fetched(package: str, version: str, arch: str | None = None, suite: str = "") -> Path:
    """The cache directory holding `package` at `version`, unpacked."""
    arch = arch or host_arch()

    def fetch(tmp: Path) -> None:
        tmp.mkdir()
        _extract(_download([(package, version)], arch, tmp, suite), tmp)

    return cache.build(_dest(package, version, arch), fetch)


def unpacked(name: str, arch: str | None = None, suite: str = "") -> Path:
    """The cache directory holding what `name` resolves to in `suite` (the
    host's own by default), unpacked."""
    arch = arch or host_arch()
    return fetched(*resolve(name, arch, suite), arch, suite)


def install(pkgs: list[tuple[str, str]], arch: str, dest: Path, suite: str = "") -> None:
    """Unpack `pkgs` (package, version) of `arch`, from `suite` (the host's
    own by default), into the directory `dest`,
    over each other as dpkg would install them (no maintainer scripts run:
    none of them can, on another architecture)."""
    debs = dest / ".debs"
    debs.mkdir(parents=True)
    _extract(_download(pkgs, arch, debs, suite), dest)
    debs.rmdir()
