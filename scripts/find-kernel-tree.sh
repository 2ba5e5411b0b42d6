#!/bin/sh
# Print the kernel tree lkvm's checkout sits in, if any: the nearest
# directory above it with a top-level Kbuild Makefile and include/uapi.
dir=$(cd "$(dirname "$0")/.." && pwd)
while [ "$dir" != / ]; do
	dir=$(dirname "$dir")
	if [ -f "$dir/include/uapi/linux/kvm.h" ] && [ -f "$dir/Kbuild" ]; then
		echo "$dir"
		exit 0
	fi
done
