"""Debian packages fetched with `apt-get download` and unpacked into the cache.

Downloading needs no root and no dpkg lock, so this works while other
processes install packages, and never changes the host's installed set.
A suite apt is not configured for (backports) gets a package list of its
own in the cache, made from the mirror apt already uses.
"""

import functools
import subprocess
from pathlib import Path

from . import cache
from .cache import TestHostError

SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
# Suites beside the host's own, by what they extend; "" is apt as configured.
BACKPORTS = "backports"


def _apt(*args: str, cwd: Path | None = None) -> str:
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


def _mirror() -> tuple[str, str]:
    """(URI, codename) of the host's main Debian suite, from its deb822 sources."""
    try:
        text = SOURCES.read_text()
    except OSError as e:
        raise TestHostError(f"cannot read {SOURCES}: {e.strerror}") from None
    for paragraph in text.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in paragraph.splitlines() if ": " in line
        )
        suites = fields.get("Suites", "").split()
        if suites and "-" not in suites[0] and "main" in fields.get("Components", ""):
            return fields["URIs"].split()[0], suites[0]
    raise TestHostError(f"{SOURCES} names no main Debian suite")


@functools.cache
def _options(suite: str) -> tuple[str, ...]:
    """apt options that make apt-get and apt-cache see `suite` alone."""
    if not suite:
        return ()
    uri, codename = _mirror()
    state = cache.root() / "apt" / f"{codename}-{suite}"
    lists = state / "lists"
    opts = (
        f"-o Dir::Etc::SourceList={state / 'sources.list'}",
        "-o Dir::Etc::SourceParts=/dev/null",
        f"-o Dir::State::Lists={lists}",
        f"-o Dir::Cache={state / 'cache'}",
    )
    opts = tuple(w for o in opts for w in o.split(" ", 1))
    if not (state / "updated").exists():
        (lists / "partial").mkdir(parents=True, exist_ok=True)
        (state / "cache").mkdir(exist_ok=True)
        (state / "sources.list").write_text(f"deb {uri} {codename}-{suite} main\n")
        _apt("apt-get", *opts, "update", "-qq")
        (state / "updated").touch()
    return opts


# What the test host needs; a kernel metapackage stands for the versioned
# image package it depends on, so a kernel update in apt makes a new cache entry.
PACKAGES = ("linux-image-amd64", "linux-image-cloud-amd64", "busybox-static")


@functools.cache
def _resolve(suite: str) -> dict[str, tuple[str, str]]:
    """Each of PACKAGES -> (package to download, its version) in `suite`,
    from one apt-cache call."""
    show = _apt("apt-cache", *_options(suite), "show", "--no-all-versions", *PACKAGES)
    found = {}
    for paragraph in show.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in paragraph.splitlines() if ": " in line
        )
        if "Package" not in fields:
            continue
        name = fields["Package"]
        found[name] = (name, fields["Version"])
        if name.startswith("linux-image-"):
            image, _, version = fields["Depends"].split(",")[0].partition(" (= ")
            found[name] = (image.strip(), version.rstrip(")"))
    missing = set(PACKAGES) - set(found)
    if missing and not suite:
        raise TestHostError(
            f"apt knows no {', '.join(sorted(missing))}: run apt-get update"
        )
    return found


def unpacked(name: str, suite: str = "") -> Path:
    """The cache directory holding what `name` (one of PACKAGES) resolves to
    in `suite` (the host's own by default), unpacked."""
    try:
        package, version = _resolve(suite)[name]
    except KeyError:
        raise TestHostError(f"no {name} in {suite}") from None
    dest = cache.root() / "pkgs" / f"{package}_{version.replace(':', '%3a')}"

    def fetch(tmp: Path) -> None:
        tmp.mkdir()
        _apt("apt-get", *_options(suite), "download", f"{package}={version}", cwd=tmp)
        (deb,) = tmp.glob("*.deb")
        _apt("dpkg-deb", "-x", str(deb), str(tmp))
        deb.unlink()

    return cache.build(dest, fetch)
