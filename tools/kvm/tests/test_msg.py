"""lkvm tells the user things one way: kvm/msg.py, with kvmtool's
prefixes; no other module writes its own prefixed lines to stderr."""

import ast
import glob
import os

import pytest

from kvm import msg
from tests.helpers import KVMDIR


@pytest.mark.parametrize("say,line", [
    (lambda: msg.info("a"), "  Info: a\n"),
    (lambda: msg.warning("b"), "  Warning: b\n"),
    (lambda: msg.error("c"), "  Error: c\n"),
    (lambda: msg.error("c", fresh_line=True), "\n  Error: c\n"),
    (lambda: msg.fatal("d"), "  Fatal: d\n"),
    (lambda: msg.note("lkvm run -k x"), "  # lkvm run -k x\n"),
])
def test_prefixes(capsys, say, line):
    say()
    out = capsys.readouterr()
    assert (out.out, out.err) == ("", line)


def lkvm_sources() -> list[str]:
    paths = glob.glob(os.path.join(KVMDIR, "**", "*.py"), recursive=True)
    return sorted(p for p in paths if not p.startswith(
        (os.path.join(KVMDIR, "tests"), os.path.join(KVMDIR, "bench"),
         os.path.join(KVMDIR, "kvm", "msg.py"))))


@pytest.mark.parametrize("path", lkvm_sources(), ids=lambda p: os.path.relpath(p, KVMDIR))
def test_no_message_is_printed_by_hand(path):
    with open(path) as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print"):
            continue
        to_stderr = any(k.arg == "file" and ast.unparse(k.value) == "sys.stderr"
                        for k in node.keywords)
        text = ast.unparse(node.args[0]) if node.args else ""
        assert not (to_stderr and any(p in text for p in (
            "Info:", "Warning:", "Error:", "Fatal:", "  #"))), \
            f"line {node.lineno}: tell the user through kvm.msg"
