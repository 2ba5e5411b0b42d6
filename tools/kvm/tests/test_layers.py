"""The VM core (kvm/) stands apart from the user's side of lkvm: it
imports no command-line, IPC, rootfs or terminal code, not even through
another of lkvm's packages.  Devices and the IPC client speak the IPC
protocol (ipc/protocol.py) without the server behind it.  Read from the
sources' import statements, so an import made only for type checking
counts too."""

import ast
import os

import pytest

from tests.helpers import KVMDIR

CORE = "kvm"
# The IPC server: builtin-run starts it; nothing else needs it.
IPC_SERVER = "ipc.server"
# Packages and modules that register against or speak the IPC protocol
# and must not pull the server (its threads, its KVM ioctls) in with it:
# the devices, the client and every command but the one that serves.
PROTOCOL_ONLY = ("virtio", "hw", "disk", "net", "scsi", "ipc.client", *sorted(
    f[:-3] for f in os.listdir(KVMDIR)
    if f.startswith("builtin-") and f.endswith(".py") and f != "builtin-run.py"))
# The user's side, by package: what each holds.
USER_SIDE = {
    "cli": "option parsing, usage and the command table",
    "ipc": "the IPC server of a running guest and its clients",
    "rootfs": "the rootfs trees lkvm setup makes and the rules for the guest's /",
    "util": "the user's terminal, --tty's pseudo-terminals, ~/.lkvm",
}


def module_file(name: str) -> str | None:
    """The file of lkvm's module or package NAME, None when it is not
    lkvm's (the standard library, cffi's _lkvm ...)."""
    path = os.path.join(KVMDIR, *name.split("."))
    for candidate in (path + ".py", os.path.join(path, "__init__.py")):
        if os.path.isfile(candidate):
            return candidate
    return None


def imports(path: str) -> set[str]:
    """The absolute module names a source file imports, anywhere in it;
    `from P import M` names P.M as well when M is a module of P."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names
                      if module_file(f"{node.module}.{alias.name}")}
    return names


def modules(name: str) -> list[str]:
    """The module NAME, or every module of the package NAME."""
    top = os.path.join(KVMDIR, *name.split("."))
    if not os.path.isdir(top):
        return [name]
    found = []
    for dirpath, _, files in os.walk(top):
        package = os.path.relpath(dirpath, KVMDIR).replace(os.sep, ".")
        found += [f"{package}.{f[:-3]}" for f in sorted(files) if f.endswith(".py")]
    return found


def reached(start: str) -> dict[str, str]:
    """Every lkvm module START imports, directly or not: each with the
    module that imports it."""
    seen = {start: start}
    todo = [start]
    while todo:
        name = todo.pop()
        for imported in imports(module_file(name)):
            if imported not in seen and module_file(imported):
                seen[imported] = name
                todo.append(imported)
    return seen


@pytest.mark.parametrize("package", sorted(USER_SIDE))
def test_user_side_package(package: str) -> None:
    assert module_file(package), f"tools/kvm/{package}/ ({USER_SIDE[package]}) is missing"


@pytest.mark.parametrize("module", modules(CORE))
def test_core_imports_no_user_side(module: str) -> None:
    bad = {name: by for name, by in reached(module).items()
           if name.split(".")[0] in USER_SIDE}
    assert not bad, f"{module} reaches the user side: " + ", ".join(
        f"{name} (imported by {by})" for name, by in sorted(bad.items()))


@pytest.mark.parametrize("module", [m for name in PROTOCOL_ONLY for m in modules(name)])
def test_protocol_users_import_no_ipc_server(module: str) -> None:
    seen = reached(module)
    assert IPC_SERVER not in seen, (
        f"{module} reaches {IPC_SERVER} (imported by {seen[IPC_SERVER]}): "
        "import the protocol's pieces from ipc.protocol")
