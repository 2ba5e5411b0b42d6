"""Build the cffi bindings of the kernel's uapi headers.

Nothing here names an ioctl, a constant or a field offset.  The headers
are preprocessed by the C compiler, every object-like macro they define is
kept if the compiler accepts it as an integer constant, and every struct,
union and enum they declare is handed to cffi as a partial declaration, so
cffi asks the compiler for sizes and offsets.  A field or an ioctl that a
newer kernel adds arrives with its headers.

Usage: uapi_build.py OUTDIR [-I INCDIR]...
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile

import cffi
from pycparser import c_ast, c_generator, c_parser

# The headers lkvm reads; asm/ resolves to the host architecture's.
HEADERS = (
    "linux/kvm.h",
    "linux/pci_regs.h",
    "linux/falloc.h",
    "linux/fcntl.h",
    "linux/magic.h",
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
    "linux/virtio_vsock.h",
    "linux/elf.h",
    "asm/bootparam.h",
    "asm/e820.h",
    "asm/processor-flags.h",
    "asm/kvm_para.h",
)

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

# Spellings the compiler accepts and pycparser does not; they do not
# change layout here because cffi takes the layout from the compiler.
CPP_FLAGS = ("-D__attribute__(x)=", "-D__extension__=", "-D__signed__=signed",
             "-D__inline__=inline", "-D__asm__(x)=", "-D__restrict=")

UAPI_FILE = re.compile(r'^# \d+ "(?P<path>[^"]*/(?:linux|asm|asm-generic)/[^"]*)"')


def source_text() -> str:
    return "".join(f"#include <{h}>\n" for h in HEADERS)


def cc(args: list[str], text: str) -> str:
    return subprocess.run(["gcc", *args, "-x", "c", "-"], input=text,
                          capture_output=True, text=True, check=True).stdout


def uapi_macros(includes: list[str]) -> list[str]:
    """Object-like macros defined by the uapi headers, in order."""
    names, in_uapi = [], False
    for line in cc(["-E", "-dD", *includes], source_text()).splitlines():
        if line.startswith("# "):
            in_uapi = bool(UAPI_FILE.match(line))
        elif in_uapi and line.startswith("#define "):
            m = re.match(r"#define (\w+) \S", line)
            if m and not m.group(1).startswith("__"):
                names.append(m.group(1))
    return list(dict.fromkeys(names))


def integer_macros(names: list[str], includes: list[str]) -> list[str]:
    """Keep the macros that the compiler takes as integer constants: a
    file-scope initialiser must be a constant and "| 0" needs an integer,
    so each failing line names a macro to drop."""
    probe = source_text() + "".join(
        f"unsigned long long __lkvm_probe_{i} = ({n}) | 0;\n"
        for i, n in enumerate(names))
    with tempfile.NamedTemporaryFile("w", suffix=".c") as f:
        f.write(probe)
        f.flush()
        r = subprocess.run(["gcc", "-fsyntax-only", "-w", *includes, f.name],
                           capture_output=True, text=True)
    first = source_text().count("\n") + 1
    bad = {int(m.group(1)) - first
           for m in re.finditer(rf"^{re.escape(f.name)}:(\d+):\d+: error", r.stderr, re.M)}
    return [n for i, n in enumerate(names) if i not in bad]


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

    def add(self, node: c_ast.Node) -> None:
        if isinstance(node, c_ast.FuncDef) or \
                isinstance(getattr(node, "type", None), c_ast.FuncDecl):
            return
        fix_array_lengths(node)
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


def declarations(includes: list[str]) -> Declarations:
    pre = cc(["-E", "-P", *CPP_FLAGS, *includes], source_text())
    decls = Declarations()
    for node in c_parser.CParser().parse(pre).ext:
        decls.add(node)
    return decls


def build(outdir: str, includes: list[str]) -> None:
    decls = declarations(includes)
    names = [n for n in integer_macros(uapi_macros(includes), includes)
             if n not in decls.enumerators]
    ffi = cffi.FFI()
    ffi.cdef("\n".join(decls.cdefs))
    ffi.cdef("".join(f"#define {n} ...\n" for n in names))
    ffi.cdef(IOCTL_CDEF + STATFS_CDEF)
    ffi.set_source("_uapi", source_text() + "\n".join(decls.prelude) + IOCTL_GLUE + STATFS_GLUE,
                   extra_compile_args=["-w", *includes])
    os.makedirs(outdir, exist_ok=True)
    ffi.compile(tmpdir=outdir, verbose=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("outdir")
    ap.add_argument("-I", dest="incdirs", action="append", default=[])
    args = ap.parse_args()
    try:
        # Absolute, since cffi compiles from inside its own directory; and
        # system headers, as installed uapi headers are: gcc then reports a
        # bad macro where it is used (the probe's line), not where defined.
        build(args.outdir, [f"-isystem{os.path.abspath(d)}" for d in args.incdirs])
    except subprocess.CalledProcessError as e:
        sys.exit(f"uapi_build: {' '.join(e.cmd)} failed:\n{e.stderr}")


if __name__ == "__main__":
    main()
