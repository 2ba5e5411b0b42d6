"""kvmtool's network defaults: the user-mode subnet and the MACs its
guests have always had, so scripts that reach the host at 192.168.33.1
keep working."""

GUEST_IP = "192.168.33.15"
HOST_IP = "192.168.33.1"
PREFIX_LEN = 24
GUEST_MAC = "02:15:15:15:15:15"     # the n-th NIC's last byte is 0x15 + n
HOST_MAC = "02:01:01:01:01:01"
