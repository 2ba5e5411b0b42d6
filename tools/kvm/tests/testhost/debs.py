"""Debian packages fetched with `apt-get download` and unpacked into the cache.

Downloading needs no root and no dpkg lock, so this works while other
processes install packages, and never changes the host's installed set.
"""

import functools
import subprocess
from pathlib import Path

from . import cache
from .cache import TestHostError


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


# What the test host needs; a kernel metapackage stands for the versioned
# image package it depends on, so a kernel update in apt makes a new cache entry.
PACKAGES = ("linux-image-amd64", "linux-image-cloud-amd64", "busybox-static")


@functools.cache
def _resolve() -> dict[str, tuple[str, str]]:
    """Each of PACKAGES -> (package to download, its version), from one apt-cache call."""
    show = _apt("apt-cache", "show", "--no-all-versions", *PACKAGES)
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
    if missing:
        raise TestHostError(
            f"apt knows no {', '.join(sorted(missing))}: run apt-get update"
        )
    return found


def unpacked(name: str) -> Path:
    """The cache directory holding what `name` (one of PACKAGES) resolves to, unpacked."""
    package, version = _resolve()[name]
    dest = cache.root() / "pkgs" / f"{package}_{version.replace(':', '%3a')}"

    def fetch(tmp: Path) -> None:
        tmp.mkdir()
        _apt("apt-get", "download", f"{package}={version}", cwd=tmp)
        (deb,) = tmp.glob("*.deb")
        _apt("dpkg-deb", "-x", str(deb), str(tmp))
        deb.unlink()

    return cache.build(dest, fetch)
