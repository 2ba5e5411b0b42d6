"""The kernel's uapi as Python objects: `ffi` for types, `lib` for constants.

Built by `make` from the headers (see uapi_build.py); nothing here is typed in.
"""

try:
    from include._uapi import ffi, lib
except ImportError as e:  # pragma: no cover - only before the first make
    raise ImportError("the uapi bindings are not built: run make") from e

__all__ = ["ffi", "lib"]
