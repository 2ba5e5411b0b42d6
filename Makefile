# lkvm's kernel-configuration targets.  The project Makefile includes or
# absorbs these; they only need $(PYTHON) with requirements.txt installed.
PYTHON ?= .venv/bin/python

# make kvmconfig [KERNEL=<tree>] [O=<objdir>] [BASE=tinyconfig] [STRICT=1]
PHONY += kvmconfig
kvmconfig:
	$(PYTHON) scripts/kvmconfig.py $(if $(KERNEL),--srctree $(KERNEL)) \
		$(if $(O),-O $(O)) $(if $(BASE),--base $(BASE)) \
		$(if $(STRICT),--strict)

# make guest-kernel: the tests' kernel, built once into $(LKVM_CACHE)
PHONY += guest-kernel
guest-kernel:
	$(PYTHON) scripts/guest-kernel.py

.PHONY: $(PHONY)
