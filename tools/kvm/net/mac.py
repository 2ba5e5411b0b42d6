"""MAC addresses as users write them."""

import re

SYNTAX = re.compile(r"[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5}")


def parse_mac(text: str) -> bytes:
    """aa:bb:cc:dd:ee:ff as 6 bytes; ValueError if it is not one."""
    if not SYNTAX.fullmatch(text):
        raise ValueError(f"not a MAC address: {text}")
    return bytes.fromhex(text.replace(":", ""))
