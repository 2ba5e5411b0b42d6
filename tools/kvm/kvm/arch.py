"""The one place that knows which architecture lkvm runs on."""

import importlib
import platform
from types import ModuleType

from kvm.errors import LkvmError

ARCHES = {"x86_64": "x86", "aarch64": "arm", "ppc64le": "powerpc"}


def load() -> ModuleType:
    machine = platform.machine()
    try:
        return importlib.import_module(f"{ARCHES[machine]}.arch")
    except (KeyError, ModuleNotFoundError):
        raise LkvmError(f"lkvm does not support {machine} hosts yet") from None
