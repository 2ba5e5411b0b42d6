#!/bin/sh
# Print a directory holding the uapi headers of Debian's linux-source-VERSION
# (make headers), made in lkvm's cache on first use.  lkvm's bindings build
# from them as from the system's: `make check-uapi` shows lkvm builds and
# passes its tests on a newer kernel's headers than the host's.
set -eu
version=$1
cache=${XDG_CACHE_HOME:-$HOME/.cache}/lkvm/uapi/linux-$version
if [ ! -f "$cache/include/linux/kvm.h" ]; then
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	(cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root \
		"linux-source-$version" >/dev/null)
	# Only what `make headers` reads: the drivers, file systems and the
	# rest would triple the time spent unpacking.
	dpkg-deb --fsys-tarfile "$tmp"/linux-source-"$version"_*.deb |
		tar -xO "./usr/src/linux-source-$version.tar.xz" |
		tar -xJ -C "$tmp" --exclude="linux-source-$version/drivers" \
			--exclude="linux-source-$version/Documentation" \
			--exclude="linux-source-$version/sound" \
			--exclude="linux-source-$version/fs" \
			--exclude="linux-source-$version/net"
	make -s -C "$tmp/linux-source-$version" headers
	rm -rf "$cache.new"
	mkdir -p "$cache.new"
	cp -a "$tmp/linux-source-$version/usr/include" "$cache.new/"
	rm -rf "$cache"
	mv "$cache.new" "$cache"
fi
echo "$cache/include"
