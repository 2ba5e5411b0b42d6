"""A GDB remote serial protocol stub: gdb debugs the guest over TCP, its
threads being the vCPUs (Documentation/lkvm-run.txt, --gdb)."""
