"""The kernel command line, put together the same way on every arch: the
arch's own base and console, the root lkvm chose unless the user's
params name one, then the user's params, which the kernel reads last."""

# The root when lkvm boots none of its own: the first disk.
DEFAULT_ROOT = "root=/dev/vda rw"


def assemble(base: str, console: str, params: str, root: str | None) -> str:
    parts = [base, console]
    if not any(p.startswith("root=") for p in params.split()):
        parts.append(root or DEFAULT_ROOT)
    if params:
        parts.append(params)
    return " ".join(parts)
