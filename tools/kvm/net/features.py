"""virtio-net's feature bits as the device and its control queue share
them: which a back end's offloads are, and which need which."""

from include.uapi import ffi, lib

STATUS_OFFSET = ffi.offsetof("struct virtio_net_config", "status")


def bit(name: str) -> int:
    return 1 << getattr(lib, f"VIRTIO_NET_F_{name}")


# What a back end that takes the virtio_net_hdr with each frame can take:
# partial checksums and whole TCP segments from the guest (HOST_*), and
# the same handed to it (GUEST_*).
HOST_OFFLOADS = bit("CSUM") | bit("HOST_TSO4") | bit("HOST_TSO6") | bit("HOST_ECN")
GUEST_OFFLOADS = bit("GUEST_CSUM") | bit("GUEST_TSO4") | bit("GUEST_TSO6") | bit("GUEST_ECN")

# Each feature and the ones of which it needs at least one (virtio 1.x
# §5.1.3.1); a driver taking it without them gets it as if not taken.
NEEDS = {
    bit("HOST_TSO4"): bit("CSUM"), bit("HOST_TSO6"): bit("CSUM"),
    bit("HOST_ECN"): bit("HOST_TSO4") | bit("HOST_TSO6"),
    bit("GUEST_TSO4"): bit("GUEST_CSUM"), bit("GUEST_TSO6"): bit("GUEST_CSUM"),
    bit("GUEST_ECN"): bit("GUEST_TSO4") | bit("GUEST_TSO6"),
    bit("CTRL_RX"): bit("CTRL_VQ"), bit("CTRL_MAC_ADDR"): bit("CTRL_VQ"),
    bit("GUEST_ANNOUNCE"): bit("CTRL_VQ"), bit("MQ"): bit("CTRL_VQ"),
    bit("CTRL_GUEST_OFFLOADS"): bit("CTRL_VQ"),
}


def usable(features: int) -> int:
    """`features` without those whose prerequisites are missing (ECN
    after the segmentation it needs, which comes after its checksum)."""
    for feature, needs in NEEDS.items():
        if features & feature and not features & needs:
            features &= ~feature
    return features
