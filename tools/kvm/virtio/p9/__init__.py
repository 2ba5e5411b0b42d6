"""9P2000.L file server for the virtio-9p device."""

from .server import Server

__all__ = ["Server"]
