# lkvm: the kernel's KVM tool, in Python.
#
#   make            set up: Debian packages, .venv, uapi bindings, test guests
#   make check      ruff and the tests (tiny guests on /dev/kvm, Linux boots)
#   make check-e2e  [N=20] the e2e tier N times: pass/fail/hang counts
#   make run        boot the default guest
#   make kvmconfig  [KERNEL=<tree>] [O=<objdir>] [BASE=tinyconfig] [STRICT=1]
#                   [ARCH=arm64]:
#                   a kernel .config that boots under lkvm
#   make guest-kernel  the tests' kernel, built once into the cache
#   make bench      benchmarks against a C baseline and QEMU
#   make help       all targets
#
# V=1 shows the full commands.

ifeq ($(V),1)
  Q =
  say = @true
else
  Q = @
  say = @printf '  %-7s %s\n'
endif

PYTHON3   ?= python3
VENV      := .venv
PY        := $(VENV)/bin/python
KVMDIR    := tools/kvm
GUESTDIR  := $(KVMDIR)/tests/guests
BUILD     := .build

# Debian packages the build and the tests use.
DEB_PKGS  := gcc make binutils libc6-dev linux-libc-dev python3-venv python3-dev \
             qemu-system-x86 qemu-utils busybox-static cpio lz4 zstd acpica-tools \
             qemu-system-arm gcc-aarch64-linux-gnu libc6-dev-arm64-cross passt \
             binutils-aarch64-linux-gnu device-tree-compiler python3-libfdt \
             qemu-system-ppc gcc-powerpc64le-linux-gnu libc6-dev-ppc64el-cross \
             binutils-powerpc64le-linux-gnu
# gdb for the arm64 gdb stub's tests (Debian's gdb knows x86 only).
DEB_PKGS  += gdb-multiarch
# ... and what building the guest kernel from Debian's source takes.
KERNEL_PKGS := linux-source-6.1 flex bison bc libelf-dev libssl-dev xz-utils

# The uapi headers: a surrounding kernel tree's when lkvm sits in one, else
# the system's.
KERNEL_TREE ?= $(shell scripts/find-kernel-tree.sh)
ifneq ($(KERNEL_TREE),)
  UAPI_INC := $(BUILD)/uapi/include
  UAPI_DEP := $(UAPI_INC)/linux/kvm.h
else
  UAPI_INC :=
  UAPI_DEP :=
endif

UAPI_SO   := $(KVMDIR)/include/_uapi.so.stamp
GUESTS    := $(patsubst %.S,%.bin,$(wildcard $(GUESTDIR)/*.S))
A64GUESTS := $(patsubst %.S,%.bin,$(wildcard $(GUESTDIR)/arm64/*.S))
PPCGUESTS := $(patsubst %.S,%.bin,$(wildcard $(GUESTDIR)/ppc64/*.S))
GDBGUEST  := $(GUESTDIR)/long64.elf
INIT      := $(KVMDIR)/guest/init
BIOS      := $(KVMDIR)/x86/bios/bios.bin
PYC       := $(BUILD)/pyc.stamp

.PHONY: all deps check check-e2e check-uapi test lint run bench clean help kvmconfig guest-kernel
all: $(VENV)/.stamp $(UAPI_SO) $(GUESTS) $(A64GUESTS) $(PPCGUESTS) $(GDBGUEST) $(BIOS) $(INIT) \
     $(PYC)

deps: $(BUILD)/deps.stamp
$(BUILD)/deps.stamp: scripts/install-deps.sh Makefile
	$(Q)mkdir -p $(BUILD)
	$(Q)scripts/install-deps.sh $(DEB_PKGS)
	$(Q)touch $@

$(VENV)/.stamp: requirements.txt | $(BUILD)/deps.stamp
	$(say) VENV $(VENV)
	$(Q)$(PYTHON3) -m venv $(VENV)
	$(Q)$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements.txt
	$(Q)touch $@

$(UAPI_INC)/linux/kvm.h:
	$(say) HDRINST $(KERNEL_TREE)
	$(Q)$(MAKE) -s -C $(KERNEL_TREE) headers_install INSTALL_HDR_PATH=$(abspath $(BUILD)/uapi)

$(UAPI_SO): $(KVMDIR)/include/uapi_build.py $(VENV)/.stamp $(UAPI_DEP)
	$(say) CFFI $(KVMDIR)/include/_uapi
	$(Q)$(PY) $(KVMDIR)/include/uapi_build.py $(KVMDIR)/include $(addprefix -I,$(UAPI_INC))
	$(Q)touch $@

# Real-mode flat binaries linked at 0: the test guests and the BIOS; they
# share macros through .include files beside them.
define flat_binary
	$(say) AS $@
	$(Q)as --32 -I $(dir $<) -o $(@:.bin=.o) $<
	$(Q)ld -m elf_i386 -Ttext=0 --oformat binary -o $@ $(@:.bin=.o)
	$(Q)rm -f $(@:.bin=.o)
endef

$(GUESTDIR)/%.bin: $(GUESTDIR)/%.S $(wildcard $(GUESTDIR)/*.inc) $(BUILD)/deps.stamp
	$(flat_binary)

$(BIOS): $(BIOS:.bin=.S) $(BUILD)/deps.stamp
	$(flat_binary)

# The gdb tests' guest with its symbols, as an x86-64 ELF so that gdb takes
# the target's architecture from it (tests/test_gdb.py relocates them).
$(GDBGUEST): $(GDBGUEST:.elf=.S) $(BUILD)/deps.stamp
	$(say) AS $@
	$(Q)as --32 -o $(@:.elf=.o) $<
	$(Q)ld -m elf_i386 -Ttext=0 -o $@ $(@:.elf=.o)
	$(Q)objcopy -O elf64-x86-64 $@
	$(Q)rm -f $(@:.elf=.o)

# The arm64 test guests: Images linked at 0 (their header carries the
# rest), run in the arm64 test host.  arm64's ld writes no raw binary.
$(GUESTDIR)/arm64/%.bin: $(GUESTDIR)/arm64/%.S $(wildcard $(GUESTDIR)/arm64/*.inc) \
		$(BUILD)/deps.stamp
	$(say) AS $@
	$(Q)aarch64-linux-gnu-as -I $(dir $<) -o $(@:.bin=.o) $<
	$(Q)aarch64-linux-gnu-ld -Ttext=0 -o $(@:.bin=.elf) $(@:.bin=.o)
	$(Q)aarch64-linux-gnu-objcopy -O binary $(@:.bin=.elf) $@
	$(Q)rm -f $(@:.bin=.o)

# The ppc64 test guests: ppc64le flat binaries linked at 0, run in the
# ppc64 test host.
$(GUESTDIR)/ppc64/%.bin: $(GUESTDIR)/ppc64/%.S $(BUILD)/deps.stamp
	$(say) AS $@
	$(Q)powerpc64le-linux-gnu-as -o $(@:.bin=.o) $<
	$(Q)powerpc64le-linux-gnu-ld -Ttext=0 -o $(@:.bin=.elf) $(@:.bin=.o)
	$(Q)powerpc64le-linux-gnu-objcopy -O binary $(@:.bin=.elf) $@
	$(Q)rm -f $(@:.bin=.o) $(@:.bin=.elf)

# The guest init runs on the host's files, so it must not need the host's
# libraries before /host is mounted: static.
$(INIT): $(INIT).c $(BUILD)/deps.stamp
	$(say) CC $@
	$(Q)$(CC) -static -Os -Wall -Wextra -o $@ $<

# Bytecode for lkvm's own modules, made here because Python may not write it
# itself (PYTHONDONTWRITEBYTECODE, or the read-only tree the nested test host
# sees): compiling every module at each start costs seconds under emulation.
$(PYC): $(shell find $(KVMDIR) scripts -name '*.py') $(VENV)/.stamp
	$(say) PYC $(KVMDIR)
	$(Q)$(PY) -m compileall -q $(KVMDIR) scripts
	$(Q)touch $@

lint: all
	$(say) RUFF $(KVMDIR) scripts
	$(Q)$(VENV)/bin/ruff check -q $(KVMDIR) scripts

test: all guest-kernel
	$(say) PYTEST $(KVMDIR)/tests
	$(Q)$(PY) -m pytest -q -rs --durations=15 $(PYTEST_FLAGS) $(KVMDIR)/tests

check: lint test check-uapi

# The bindings built from a newer kernel's uapi headers than the host's
# (Debian's linux-source-$(UAPI_NEW), cached) in a copy of the tree, and
# tests run there: lkvm is not lock-stepped to the host's kernel headers.
# make check runs the tests that lean on the bindings most (layouts,
# ioctls, every arch's structures, tiny guests on /dev/kvm, the
# transports, gdb's registers), about a minute, which keeps it within its
# 30 minutes; `make check-uapi UAPI_TESTS=` runs the whole suite there but
# its fuzzers and kernel-config tests (about 4 minutes).
UAPI_NEW   := 6.12
UAPI_TREE  := $(BUILD)/uapi-$(UAPI_NEW)
UAPI_TESTS ?= test_uapi.py test_cstruct.py test_spelled_out.py test_kvm.py test_tiny_guests.py \
              test_virtio_transports.py test_virtio_devices.py test_msix_irqfd.py \
              test_pci_ecam.py test_arm64.py test_ppc64.py test_gdb.py test_gdb_arm64.py \
              test_run_options.py test_net_vhost.py test_virtio_vsock.py
UAPI_SKIP  := test_virtio_fuzz.py test_p9_fuzz.py test_cli_fuzz.py test_kvmconfig.py
check-uapi: all
	$(say) UAPI linux-$(UAPI_NEW)
	$(Q)inc=$$(scripts/uapi-headers.sh $(UAPI_NEW)) && rm -rf $(UAPI_TREE) && \
	mkdir -p $(UAPI_TREE)/$(BUILD)/uapi && \
	tar -c --exclude=./.git --exclude=./$(BUILD) --exclude=./$(VENV) --exclude='_uapi*' \
		--exclude=__pycache__ . | tar -x -C $(UAPI_TREE) && \
	ln -s $(abspath $(VENV)) $(UAPI_TREE)/$(VENV) && \
	ln -s $$inc $(UAPI_TREE)/$(BUILD)/uapi/include && \
	$(PY) $(UAPI_TREE)/$(KVMDIR)/include/uapi_build.py $(UAPI_TREE)/$(KVMDIR)/include -I $$inc && \
	cd $(UAPI_TREE) && $(abspath $(PY)) -m pytest -q -m "not e2e" $(PYTEST_FLAGS) \
		$(or $(addprefix $(KVMDIR)/tests/,$(UAPI_TESTS)), \
		     $(addprefix --ignore=$(KVMDIR)/tests/,$(UAPI_SKIP)) $(KVMDIR)/tests)

# A soak of the Linux boots: the e2e tier N times over, each run in its own
# test host, counting runs passed and failed and test hosts that died (hung).
check-e2e: all guest-kernel
	$(Q)$(PY) scripts/testhost.py soak-e2e -n $(or $(N),20)

kvmconfig: $(VENV)/.stamp
	$(Q)$(PY) scripts/kvmconfig.py $(if $(KERNEL),--srctree $(KERNEL)) \
		$(if $(O),-O $(O)) $(if $(BASE),--base $(BASE)) $(if $(STRICT),--strict) \
		$(if $(ARCH),--arch $(ARCH))

guest-kernel: $(VENV)/.stamp
	$(Q)scripts/install-deps.sh $(KERNEL_PKGS)
	$(Q)$(PY) scripts/guest-kernel.py

# The default guest: the kernel 'make guest-kernel' builds (cached after the
# first build), on the default rootfs: a shell on the host's files.  Where
# this host's KVM emulates guest CPL0 code, it boots inside the nested test
# host, with its console on this terminal.  RUN_ARGS adds lkvm run options.
run: all guest-kernel
	$(Q)kernel=$$($(PY) scripts/guest-kernel.py | tail -n 1) && \
	if $(PY) scripts/testhost.py needed >/dev/null; then \
		$(PY) scripts/testhost.py console -- ./lkvm run -k $$kernel $(RUN_ARGS); \
	else \
		./lkvm run -k $$kernel $(RUN_ARGS); \
	fi

$(BUILD)/bench/pio_loop: $(KVMDIR)/bench/pio_loop.c $(BUILD)/deps.stamp
	$(say) CC $@
	$(Q)mkdir -p $(dir $@)
	$(Q)$(CC) -O2 -Wall $(addprefix -I,$(UAPI_INC)) -o $@ $<

bench: all $(BUILD)/bench/pio_loop
	$(Q)$(PY) $(KVMDIR)/bench/run.py

clean:
	$(say) CLEAN .
	$(Q)rm -rf $(BUILD) $(GUESTS) $(A64GUESTS) $(BIOS) $(INIT) $(KVMDIR)/include/_uapi.* .pytest_cache .ruff_cache
	$(Q)find . -name __pycache__ -prune -exec rm -rf {} +

help:
	@sed -n 's/^#   //p' Makefile
