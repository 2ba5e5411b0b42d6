"""Build the cffi bindings of the kernel's uapi headers.

Nothing here names an ioctl, a constant or a field offset.  The headers
are preprocessed by the C compiler, every object-like macro they define is
kept if the compiler accepts it as an integer constant, and every struct,
union and enum they declare is handed to cffi as a partial declaration, so
cffi asks the compiler for sizes and offsets.  A field or an ioctl that a
newer kernel adds arrives with its headers.

Usage: uapi_build.py OUTDIR [-I INCDIR]... [--arch ARCH --cc CC --python-include DIR...]

With --arch naming another architecture than this machine's, the module is
cross-compiled for it with CC against that architecture's uapi headers
(-I) and Python headers, and named as its Python looks for it.
"""

import argparse
import contextlib
import importlib.util
import io
import os
import platform
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import cffi
from pycparser import c_ast, c_generator, c_parser

# The headers lkvm reads on every architecture; asm/ resolves to the target's.
HEADERS = (
    "linux/kvm.h",
    "linux/pci_regs.h",
    "linux/falloc.h",
    "linux/fcntl.h",
    "linux/magic.h",
    "linux/mman.h",
    "linux/if_tun.h",
    "linux/virtio_9p.h",
    "linux/virtio_balloon.h",
    "linux/virtio_blk.h",
    "linux/virtio_config.h",
    "linux/virtio_console.h",
    "linux/virtio_ids.h",
    "linux/virtio_mmio.h",
    "linux/virtio_net.h",
    "linux/virtio_pci.h",
    "linux/virtio_ring.h",
    "linux/virtio_rng.h",
    "linux/virtio_scsi.h",
    "linux/virtio_vsock.h",
    "linux/vhost.h",
    "linux/elf.h",
    # The SCSI command set, status and sense keys: the kernel exports no header
    # of them, so the C library's (SCSI-2's part; scsi/cdb.py has the rest).
    "scsi/scsi.h",
)

# ... and those of one architecture, which its directory lists in
# <arch>/headers.py (named here as uname -m names the machine).
KVMDIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def arch_dirs() -> dict[str, str]:
    """The machines that have an arch directory, and its path."""
    sys.path.insert(0, KVMDIR)
    try:
        from kvm.arch import ARCHES
    finally:
        sys.path.remove(KVMDIR)
    dirs = {m: os.path.join(KVMDIR, d) for m, d in ARCHES.items()}
    return {m: d for m, d in dirs.items() if os.path.isfile(os.path.join(d, "headers.py"))}


def arch_headers(machine: str) -> tuple[str, ...]:
    """The arch directory's UAPI_HEADERS, read by path: the arch modules
    themselves need the bindings this builds."""
    path = os.path.join(arch_dirs()[machine], "headers.py")
    spec = importlib.util.spec_from_file_location(f"_lkvm_headers_{machine}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.UAPI_HEADERS


# ioctl(2) with fixed argument types: the variadic libc call cannot be
# reached from cffi at full speed, and an int argument would lose the top
# bits of addresses like KVM_SET_TSS_ADDR's.  cffi drops the GIL around it.
IOCTL_GLUE = """
#include <sys/ioctl.h>
static int lkvm_ioctl(int fd, unsigned long request, unsigned long arg)
{
	return ioctl(fd, request, arg);
}
static int lkvm_ioctl_ptr(int fd, unsigned long request, void *arg)
{
	return ioctl(fd, request, arg);
}
"""

# statfs(2)'s f_type (a *_MAGIC of linux/magic.h), which os.statvfs
# leaves out; -1 with errno set on failure.
STATFS_GLUE = """
#include <sys/vfs.h>
static long long lkvm_fs_type(const char *path)
{
	struct statfs st;

	return statfs(path, &st) ? -1 : (long long)st.f_type;
}
"""
STATFS_CDEF = """
long long lkvm_fs_type(const char *path);
"""
IOCTL_CDEF = """
int lkvm_ioctl(int fd, unsigned long request, unsigned long arg);
int lkvm_ioctl_ptr(int fd, unsigned long request, void *arg);
"""

# Memory fences for the rings lkvm shares with the guest (kvm/barrier.py),
# which Python has none of.  The full fence is an instruction everywhere;
# acquire and release only hold the compiler back on x86, which keeps
# loads in order and stores in order, and are barriers on arm64.
FENCE_GLUE = """
static void lkvm_mb(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static void lkvm_acquire(void) { __atomic_thread_fence(__ATOMIC_ACQUIRE); }
static void lkvm_release(void) { __atomic_thread_fence(__ATOMIC_RELEASE); }
"""
FENCE_CDEF = """
void lkvm_mb(void);
void lkvm_acquire(void);
void lkvm_release(void);
"""
GLUE_FUNCTIONS = frozenset(re.findall(r"(lkvm_\w+)\(", IOCTL_CDEF + STATFS_CDEF + FENCE_CDEF))

# Spellings the compiler accepts and pycparser does not; they do not
# change layout here because cffi takes the layout from the compiler.
CPP_FLAGS = ("-D__attribute__(x)=", "-D__extension__=", "-D__signed__=signed",
             "-D__inline__=inline", "-D__asm__(x)=", "-D__restrict=")

# GCC's 128-bit integers (arm64's FP/SIMD and pointer authentication
# registers, and linux/types.h's __s128/__u128 from 6.11 on): pycparser must
# know the typedef names to parse, and cffi has no such type, so fields of
# them, and typedefs of them, are left out; their structs stay partial, so
# the compiler still gives their sizes and the other fields' offsets.
INT128 = ("__uint128_t", "__int128_t")
INT128_TYPES = frozenset({"__int128", *INT128})

UAPI_FILE = re.compile(r'^# \d+ "(?P<path>[^"]*/(?:linux|asm|asm-generic|scsi)/[^"]*)"')


@dataclass(frozen=True)
class Target:
    """The architecture the bindings are for and the compiler that builds
    them; python_includes are its Python's headers when cross-compiling."""

    arch: str = platform.machine()
    cc: str = "gcc"
    python_includes: tuple[str, ...] = ()

    @property
    def native(self) -> bool:
        return self.arch == platform.machine()

    def source_text(self) -> str:
        return "".join(f"#include <{h}>\n" for h in HEADERS + arch_headers(self.arch))

    def run_cc(self, args: list[str], text: str) -> str:
        return subprocess.run([self.cc, *args, "-x", "c", "-"], input=text,
                              capture_output=True, text=True, check=True).stdout


def uapi_macros(target: Target, includes: list[str]) -> list[str]:
    """Object-like macros defined by the uapi headers, in order."""
    names, in_uapi = [], False
    for line in target.run_cc(["-E", "-dD", *includes], target.source_text()).splitlines():
        if line.startswith("# "):
            in_uapi = bool(UAPI_FILE.match(line))
        elif in_uapi and line.startswith("#define "):
            m = re.match(r"#define (\w+) \S", line)
            if m and not m.group(1).startswith("__"):
                names.append(m.group(1))
    return list(dict.fromkeys(names))


def integer_macros(target: Target, names: list[str], includes: list[str]) -> list[str]:
    """Keep the macros that the compiler takes as integer constants: a
    file-scope initialiser must be a constant and "| 0" needs an integer,
    so each failing line names a macro to drop.  gcc reports an undeclared
    identifier at its first use only (arm64's SZ_64K is used by two
    macros), so the survivors are probed again until none fails."""
    while bad := failing_probes(target, names, includes):
        names = [n for i, n in enumerate(names) if i not in bad]
    return names


def failing_probes(target: Target, names: list[str], includes: list[str]) -> set[int]:
    """Indices in `names` of the macros whose probe lines fail to compile."""
    probe = target.source_text() + "".join(
        f"unsigned long long __lkvm_probe_{i} = ({n}) | 0;\n"
        for i, n in enumerate(names))
    with tempfile.NamedTemporaryFile("w", suffix=".c") as f:
        f.write(probe)
        f.flush()
        r = subprocess.run([target.cc, "-fsyntax-only", "-w", *includes, f.name],
                           capture_output=True, text=True)
    first = target.source_text().count("\n") + 1
    return {int(m.group(1)) - first
            for m in re.finditer(rf"^{re.escape(f.name)}:(\d+):\d+: error", r.stderr, re.M)}


BINARY = {"+": int.__add__, "-": int.__sub__, "*": int.__mul__,
          "/": int.__floordiv__, "%": int.__mod__, "<<": int.__lshift__,
          ">>": int.__rshift__, "|": int.__or__, "&": int.__and__,
          "^": int.__xor__}
UNARY = {"-": int.__neg__, "+": int.__pos__, "~": int.__invert__}


def const_value(node: c_ast.Node) -> int:
    """Value of an array length written as arithmetic on numbers; cffi only
    takes plain numbers, and a "..." length would make the enclosing
    anonymous unions partial, which cffi cannot express."""
    if isinstance(node, c_ast.Constant) and node.type in ("int", "unsigned int",
                                                          "long", "unsigned long"):
        return int(node.value.rstrip("uUlL"), 0)
    if isinstance(node, c_ast.BinaryOp) and node.op in BINARY:
        return BINARY[node.op](const_value(node.left), const_value(node.right))
    if isinstance(node, c_ast.UnaryOp) and node.op in UNARY:
        return UNARY[node.op](const_value(node.expr))
    raise ValueError(node)


def fix_array_lengths(node: c_ast.Node) -> None:
    """Put array lengths in the form cffi reads: a number, or "..." for the
    compiler to fill in."""
    for _, child in node.children():
        fix_array_lengths(child)
    if isinstance(node, c_ast.ArrayDecl) and node.dim is not None:
        try:
            node.dim = c_ast.Constant("int", str(const_value(node.dim)))
        except (ValueError, ZeroDivisionError):
            node.dim = c_ast.ID("...")


def is_int128(decl: c_ast.Node, int128: set[str]) -> bool:
    tdecl = decl.type
    while isinstance(tdecl, c_ast.ArrayDecl):
        tdecl = tdecl.type
    names = getattr(getattr(tdecl, "type", None), "names", [])
    return any(n in int128 for n in names)


def drop_int128_fields(node: c_ast.Node, int128: set[str]) -> None:
    for _, child in node.children():
        drop_int128_fields(child, int128)
    if isinstance(node, (c_ast.Struct, c_ast.Union)) and node.decls:
        node.decls = [d for d in node.decls if not is_int128(d, int128)]


def anonymous_body(node: c_ast.Node) -> c_ast.Node | None:
    if isinstance(node, (c_ast.Struct, c_ast.Union)) and node.name is None \
            and node.decls is not None:
        return node
    return None


class Declarations:
    """cffi wants every struct partial ("...;": the compiler gives sizes,
    offsets and packing) but cannot make an anonymous type partial.  So
    each named field of an anonymous struct or union type gets a typedef,
    written in C with __typeof__ and declared partial to cffi; anonymous
    members stay nested in their parent, which cffi accepts."""

    def __init__(self) -> None:
        self.cdefs: list[str] = []
        self.prelude: list[str] = []
        self.enumerators: set[str] = set()
        self.int128 = set(INT128_TYPES)   # grows by the headers' typedefs of them

    def add(self, node: c_ast.Node) -> None:
        if isinstance(node, c_ast.FuncDef) or \
                isinstance(getattr(node, "type", None), c_ast.FuncDecl):
            return
        if isinstance(node, c_ast.Typedef) and is_int128(node, self.int128):
            self.int128.add(node.name)
            return
        fix_array_lengths(node)
        drop_int128_fields(node, self.int128)
        body = node.type
        if isinstance(node, c_ast.Typedef):
            body = node.type.type if isinstance(node.type, c_ast.TypeDecl) else None
            cname = node.name
        elif isinstance(body, (c_ast.Struct, c_ast.Union)):
            cname = f"{'struct' if isinstance(body, c_ast.Struct) else 'union'} {body.name}"
        if isinstance(body, c_ast.Enum) and body.values:
            self.add_enum(body)
        elif isinstance(body, (c_ast.Struct, c_ast.Union)) and body.decls is not None:
            self.hoist_fields(body, cname)
            self.cdefs.append(partial(c_generator.CGenerator().visit(node), body))
        else:
            self.cdefs.append(c_generator.CGenerator().visit(node) + ";")

    def add_enum(self, enum: c_ast.Enum) -> None:
        names = [e.name for e in enum.values.enumerators]
        self.enumerators.update(names)
        self.cdefs.append(f"enum {enum.name or ''} {{ {', '.join(names)}, ... }};")

    def hoist_fields(self, body: c_ast.Node, cname: str) -> None:
        for field in body.decls:
            if field.name is None and anonymous_body(field.type):
                self.hoist_fields(field.type, cname)
                continue
            tdecl, index = field.type, ""
            while isinstance(tdecl, c_ast.ArrayDecl):
                tdecl, index = tdecl.type, index + "[0]"
            inner = anonymous_body(getattr(tdecl, "type", None))
            if inner is None:
                continue
            tname = re.sub(r"\W", "_", cname.removeprefix("struct ")
                           .removeprefix("union ")) + "__" + field.name
            self.prelude.append(
                f"typedef __typeof__((({cname} *)0)->{field.name}{index}) {tname};")
            tdecl.type = c_ast.IdentifierType([tname])
            self.add(c_ast.Typedef(tname, [], ["typedef"],
                                   c_ast.TypeDecl(tname, [], None, inner)))


def partial(text: str, body: c_ast.Node) -> str:
    """Close the outer body with "...;" unless it has bit-fields, which
    cffi cannot combine with a partial struct (it checks those itself)."""
    if any(getattr(f, "bitsize", None) for f in body.decls):
        return text + ";"
    return re.sub(r"\n\}(?=[^\n]*$)", "\n  ...;\n}", text) + ";"


def declarations(target: Target, includes: list[str]) -> Declarations:
    pre = target.run_cc(["-E", "-P", *CPP_FLAGS, *includes], target.source_text())
    names = "".join(f"typedef int {t};\n" for t in INT128)
    decls = Declarations()
    for node in c_parser.CParser().parse(names + pre).ext[len(INT128):]:
        decls.add(node)
    return decls


# Names lkvm's code takes from the bindings: lib.NAME in its Python.
LIB_NAME = re.compile(r"\blib\.([A-Za-z_]\w*)")


def used_names(machine: str) -> dict[str, str]:
    """Each lib.NAME the code for `machine` uses, with a file using it:
    the generic code and that machine's arch directory, not the tests, nor
    another arch's directory, whose names its own headers have."""
    others = {d for m, d in arch_dirs().items() if m != machine}
    skip = others | {os.path.join(KVMDIR, d) for d in ("tests", "include")}
    used: dict[str, str] = {}
    for top, dirs, files in os.walk(KVMDIR):
        dirs[:] = sorted(d for d in dirs if os.path.join(top, d) not in skip)
        for f in sorted(files):
            if f.endswith(".py"):
                path = os.path.join(top, f)
                with open(path) as src:
                    for name in LIB_NAME.findall(src.read()):
                        used.setdefault(name, os.path.relpath(path, KVMDIR))
    return used


def check_names(target: Target, includes: list[str], have: set[str]) -> None:
    """One line naming what lkvm uses and these headers lack, at build
    time rather than as an AttributeError in a running guest."""
    missing = {n: f for n, f in used_names(target.arch).items() if n not in have}
    if missing:
        where = " ".join(i.removeprefix("-isystem") for i in includes) or "the system's"
        sys.exit(f"uapi_build: the uapi headers ({where}) lack what lkvm uses: "
                 + ", ".join(f"{n} ({f})" for n, f in sorted(missing.items())))


def build(outdir: str, includes: list[str], target: Target = Target()) -> None:
    decls = declarations(target, includes)
    names = [n for n in integer_macros(target, uapi_macros(target, includes), includes)
             if n not in decls.enumerators]
    check_names(target, includes, {*names, *decls.enumerators, *GLUE_FUNCTIONS})
    ffi = cffi.FFI()
    ffi.cdef("\n".join(decls.cdefs))
    ffi.cdef("".join(f"#define {n} ...\n" for n in names))
    ffi.cdef(IOCTL_CDEF + STATFS_CDEF + FENCE_CDEF)
    ffi.set_source("_uapi", target.source_text() + "\n".join(decls.prelude) + IOCTL_GLUE
                   + STATFS_GLUE + FENCE_GLUE,
                   extra_compile_args=["-w", *includes])
    os.makedirs(outdir, exist_ok=True)
    if target.native:
        ffi.compile(tmpdir=outdir, verbose=False)
    else:
        cross_compile(ffi, outdir, includes, target)


# The triplet's CPU where it is not uname -m's.
TRIPLET_CPU = {"ppc64le": "powerpc64le"}


def cross_compile(ffi: cffi.FFI, outdir: str, includes: list[str], target: Target) -> None:
    """Compile the module for `target` with its compiler: cffi's own build
    runs this machine's.  The name carries the target's tag, as its
    Python's import looks for (PEP 3149): this Python's version, the
    target's Debian multiarch triplet."""
    name = f"_uapi.{sys.implementation.cache_tag}-{TRIPLET_CPU.get(target.arch, target.arch)}" \
           "-linux-gnu.so"
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "_uapi.c")
        with contextlib.redirect_stdout(io.StringIO()):  # cffi says what it generates
            ffi.emit_c_code(source)
        subprocess.run([target.cc, "-shared", "-fPIC", "-O2", "-w", *includes,
                        *(f"-I{os.path.abspath(d)}" for d in target.python_includes),
                        "-o", os.path.join(outdir, name), source],
                       capture_output=True, text=True, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("outdir")
    ap.add_argument("-I", dest="incdirs", action="append", default=[])
    ap.add_argument("--arch", default=platform.machine(), choices=sorted(arch_dirs()),
                    help="the architecture to build for (default: this machine's)")
    ap.add_argument("--cc", default="gcc", help="its C compiler")
    ap.add_argument("--python-include", dest="python_includes", action="append",
                    default=[], help="its Python's headers (when cross-compiling)")
    args = ap.parse_args()
    target = Target(args.arch, args.cc, tuple(args.python_includes))
    try:
        # Absolute, since cffi compiles from inside its own directory; and
        # system headers, as installed uapi headers are: gcc then reports a
        # bad macro where it is used (the probe's line), not where defined.
        build(args.outdir, [f"-isystem{os.path.abspath(d)}" for d in args.incdirs], target)
    except subprocess.CalledProcessError as e:
        sys.exit(f"uapi_build: {' '.join(e.cmd)} failed:\n{e.stderr}")


if __name__ == "__main__":
    main()
