#!/usr/bin/env python3
"""Build the guest kernel lkvm's tests boot, from Debian's linux-source.

Unpacks /usr/src/linux-source-<version>.tar.xz into the cache, configures
it with `kvmconfig.py --base tinyconfig --strict`, runs `make bzImage`,
and prints the bzImage's path last; its vmlinux (symbols for gdb) is kept
beside it.  The result lives in
${LKVM_CACHE:-$HOME/.cache/lkvm}/kernel/<source version>-<fragment hash>/,
so a second run with the same source and fragments only prints the path.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))
import kvmconfig  # noqa: E402  (a sibling script, found through the path above)

PROG = "lkvm guest-kernel"
BASE = "tinyconfig"
# Checked in the final .config: built in, not modules, or the tests
# cannot boot without an initramfs full of modules.
BUILT_IN = ("VIRTIO_PCI", "VIRTIO_MMIO", "VIRTIO_BLK", "VIRTIO_NET",
            "VIRTIO_CONSOLE", "NET_9P", "NET_9P_VIRTIO", "9P_FS",
            "VIRTIO_VSOCKETS", "SCSI_VIRTIO", "BLK_DEV_SD")
PROGRESS_EVERY = 30.0  # seconds between progress lines while make runs


class Error(Exception):
    """A problem reported as one line on stderr."""


def cache_dir() -> Path:
    return Path(os.environ.get("LKVM_CACHE")
                or Path.home() / ".cache" / "lkvm")


def say(msg: str) -> None:
    print(f"  {msg}", flush=True)


def source_version(tarball: Path) -> str:
    """The Debian package version that installed the tarball (it changes
    with Debian's patches), else a digest of the tarball itself."""
    owner = subprocess.run(["dpkg", "-S", str(tarball)], capture_output=True,
                           text=True, check=False)
    if owner.returncode == 0:
        package = owner.stdout.partition(":")[0]
        version = subprocess.run(["dpkg-query", "-W", "-f=${Version}",
                                  package], capture_output=True, text=True,
                                 check=False).stdout.strip()
        if version:
            return version
    digest = hashlib.sha256()
    with tarball.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return "src" + digest.hexdigest()[:12]


def unpack(tarball: Path, version: str, into: Path) -> Path:
    """Unpack once per source version; a stamp file records which one."""
    tree = into / tarball.name.removesuffix(".tar.xz")
    stamp = tree / ".lkvm-unpacked"
    if stamp.is_file() and stamp.read_text() == version:
        return tree
    say(f"unpacking {tarball} into {into}")
    # Unpack beside the tree and rename, so an interrupted unpack never
    # looks like a tree; tar(1) is several times faster than tarfile here.
    staging = into / f".unpack-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    subprocess.run(["tar", "-xf", str(tarball), "-C", str(staging)],
                   check=True)
    unpacked = staging / tree.name
    if not (unpacked / "Kconfig").is_file():
        raise Error(f"{tarball} has no {tree.name}/Kconfig")
    (unpacked / stamp.name).write_text(version)
    shutil.rmtree(tree, ignore_errors=True)
    unpacked.rename(tree)
    staging.rmdir()
    return tree


def fragment_hash(tree: Path) -> str:
    """What decides the configuration: the base and both fragments."""
    digest = hashlib.sha256(BASE.encode())
    for fragment in kvmconfig.fragments_for(tree, kvmconfig.LKVM_FRAGMENT):
        digest.update(fragment.read_bytes())
    return digest.hexdigest()[:12]


def check_built_in(config: Path) -> None:
    values = kvmconfig.read_fragment(config)
    missing = [n for n in BUILT_IN if values.get(n) != "y"]
    if missing:
        raise Error(f"{config}: not built in: {' '.join(missing)}")


def run_make(tree: Path, objtree: Path, jobs: int, log: Path) -> None:
    """make bzImage into objtree, output to the log, a line of progress
    every so often so a 10-minute build does not look hung."""
    cmd = ["make", "-C", str(tree), f"O={objtree}", f"-j{jobs}", "bzImage"]
    say(f"building: {' '.join(cmd)} (log: {log})")
    start = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        while True:
            try:
                proc.wait(timeout=PROGRESS_EVERY)
                break
            except subprocess.TimeoutExpired:
                say(f"{time.monotonic() - start:4.0f}s {_last_line(log)}")
    if proc.returncode != 0:
        raise Error(f"make bzImage failed ({proc.returncode}); see {log}")
    say(f"built in {time.monotonic() - start:.0f}s")


def _last_line(log: Path) -> str:
    with log.open("rb") as f:
        f.seek(max(0, log.stat().st_size - 512))
        lines = f.read().decode(errors="replace").strip().splitlines()
    return lines[-1].strip() if lines else ""


def build(tarball: Path, jobs: int, force: bool) -> Path:
    cache = cache_dir()
    version = source_version(tarball)
    tree = unpack(tarball, version, cache / "src")
    out = cache / "kernel" / f"{version}-{fragment_hash(tree)}"
    bzimage = out / "bzImage"
    # A cached kernel without its vmlinux (built before it was kept) is
    # built again, once.
    if bzimage.is_file() and (out / "vmlinux").is_file() and not force:
        say(f"cached: {out}")
        return bzimage
    objtree = out / "build"
    say(f"configuring {tree} ({BASE} + kvm_guest.config + lkvm.config)")
    if kvmconfig.main(["--srctree", str(tree), "-O", str(objtree),
                       "--base", BASE, "--strict"]) != 0:
        raise Error("kvmconfig failed")
    check_built_in(objtree / ".config")
    run_make(tree, objtree, jobs, out / "build.log")
    shutil.copy2(objtree / ".config", out / "config")
    # Copy then rename: a bzImage in the cache is always a complete one.
    shutil.copy2(objtree / "arch" / "x86" / "boot" / "bzImage",
                 out / "bzImage.tmp")
    # Its symbols, beside it, for gdb (lkvm run --gdb): copied first, as
    # the bzImage is what says the build is complete.
    shutil.copy2(objtree / "vmlinux", out / "vmlinux")
    os.replace(out / "bzImage.tmp", bzimage)
    # The object tree is a few hundred MB; the cache keeps only the result.
    shutil.rmtree(objtree)
    return bzimage


def default_tarball() -> Path:
    version = os.environ.get("LKVM_LINUX_VERSION", "6.1")
    return Path(f"/usr/src/linux-source-{version}.tar.xz")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="guest-kernel.py",
                                description=__doc__.split("\n")[0])
    p.add_argument("--source", type=Path, default=default_tarball(),
                   help="linux-source tarball (default: %(default)s)")
    p.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--force", action="store_true",
                   help="rebuild even when the cache has this kernel")
    args = p.parse_args(argv)
    if not args.source.is_file():
        print(f"{PROG}: no {args.source}; install it with "
              f"apt-get install {args.source.name.removesuffix('.tar.xz')}",
              file=sys.stderr)
        return 1
    try:
        bzimage = build(args.source, args.jobs, args.force)
    except (Error, OSError, subprocess.CalledProcessError) as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    print(bzimage)
    return 0


if __name__ == "__main__":
    sys.exit(main())
