"""lkvm's version, as `lkvm version` prints it."""

VERSION = "0.1.0"
