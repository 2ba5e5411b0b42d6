"""The cffi bindings agree with the C compiler on the same headers."""

import os
import shutil
import subprocess

import pytest

from include import uapi_build
from include.uapi import ffi, lib
from tests.helpers import TOP

# Where make installs a surrounding kernel tree's headers; the bindings
# were built from them when they exist, so the probe must use them too.
TREE_HEADERS = os.path.join(TOP, ".build", "uapi", "include")

CONSTANTS = ("KVM_RUN", "KVM_SET_USER_MEMORY_REGION", "KVM_CREATE_VCPU", "KVM_GET_SREGS",
             "KVM_IRQFD", "KVM_EXIT_IO", "KVM_EXIT_MMIO", "KVM_CAP_IRQCHIP",
             "VIRTIO_F_VERSION_1", "VIRTIO_ID_BLOCK", "PCI_COMMAND", "X86_CR0_PE")
SIZES = ("struct kvm_run", "struct kvm_sregs", "struct kvm_regs", "struct kvm_cpuid_entry2",
         "struct kvm_lapic_state", "struct boot_params", "struct setup_header",
         "struct virtio_pci_common_cfg")
OFFSETS = (("struct kvm_run", "io"), ("struct kvm_run", "mmio"), ("struct kvm_run", "s"),
           ("struct kvm_sregs", "efer"), ("struct boot_params", "hdr"),
           ("struct boot_params", "e820_table"), ("struct setup_header", "cmd_line_ptr"),
           ("struct virtio_pci_common_cfg", "queue_desc_lo"))


def compiled_values(tmp_path) -> list[int]:
    body = [f'printf("%llu\\n", (unsigned long long)({c}));' for c in CONSTANTS]
    body += [f'printf("%zu\\n", sizeof({t}));' for t in SIZES]
    body += [f'printf("%zu\\n", offsetof({t}, {f}));' for t, f in OFFSETS]
    src = tmp_path / "probe.c"
    src.write_text("#include <stdio.h>\n#include <stddef.h>\n#include <linux/kvm.h>\n"
                   "#include <linux/virtio_config.h>\n#include <linux/virtio_ids.h>\n"
                   "#include <linux/virtio_pci.h>\n#include <linux/pci_regs.h>\n"
                   "#include <asm/bootparam.h>\n#include <asm/processor-flags.h>\n"
                   "int main(void) {\n" + "\n".join(body) + "\nreturn 0; }\n")
    exe = tmp_path / "probe"
    includes = ["-isystem", TREE_HEADERS] if os.path.isdir(TREE_HEADERS) else []
    subprocess.run(["gcc", *includes, "-o", str(exe), str(src)], check=True)
    return [int(x) for x in subprocess.run([str(exe)], capture_output=True,
                                           check=True).stdout.split()]


def test_bindings_match_the_compiler(tmp_path):
    ours = [getattr(lib, c) for c in CONSTANTS]
    ours += [ffi.sizeof(t) for t in SIZES]
    ours += [ffi.offsetof(t, f) for t, f in OFFSETS]
    assert ours == compiled_values(tmp_path)


def test_known_abi_values():
    # Fixed by the kernel ABI since KVM's first days; a wrong build shows here.
    assert lib.KVM_RUN == 0xAE80
    assert lib.KVM_SET_USER_MEMORY_REGION == 0x4020AE46
    assert lib.KVM_API_VERSION == 12


def test_nested_anonymous_fields_are_reachable():
    # io and mmio share kvm_run's exit union: what one writes, the other sees.
    run = ffi.new("struct kvm_run *")
    run.mmio.phys_addr = 0x3F8
    assert run.io.direction == 0xF8 and run.io.size == 0x03


def test_struct_readers_agree_with_cffi():
    from kvm.cstruct import reader

    run = ffi.new("struct kvm_run *")
    run.exit_reason = lib.KVM_EXIT_IO
    run.io.direction, run.io.size, run.io.port = lib.KVM_EXIT_IO_OUT, 2, 0x3F8
    run.io.count, run.io.data_offset = 7, 4096
    io, at = reader("kvm_run__io", ("direction", "size", "port", "count", "data_offset"),
                    ffi.offsetof("struct kvm_run", "io"))
    assert io.unpack_from(ffi.buffer(run), at) == (lib.KVM_EXIT_IO_OUT, 2, 0x3F8, 7, 4096)
    reason, at = reader("struct kvm_run", ("exit_reason",))
    assert reason.unpack_from(ffi.buffer(run), at) == (lib.KVM_EXIT_IO,)


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-gcc") is None,
                    reason="no arm64 cross compiler (Debian gcc-aarch64-linux-gnu)")
def test_arm64_bindings_parse_without_x86_headers():
    # The cross compiler's own arm64 uapi headers: x86's boot protocol
    # headers do not exist there, and arm64's ioctls and structs appear.
    target = uapi_build.Target("aarch64", "aarch64-linux-gnu-gcc")
    macros = uapi_build.integer_macros(target, uapi_build.uapi_macros(target, []), [])
    assert {"KVM_ARM_PREFERRED_TARGET", "KVM_ARM_VCPU_INIT", "KVM_API_VERSION"} <= set(macros)
    assert "KVM_SET_CPUID2" not in macros
    # Both use the kernel-internal SZ_64K, which gcc reports only once.
    assert not {"KVM_VGIC_V3_ITS_SIZE", "KVM_VGIC_V3_REDIST_SIZE"} & set(macros)
    cdefs = "\n".join(uapi_build.declarations(target, []).cdefs)
    assert "struct kvm_vcpu_init" in cdefs
    assert "struct boot_params" not in cdefs


def test_headers_lacking_a_used_name_fail_the_build_in_one_line():
    """Headers older than what lkvm uses stop the build with the names and
    where lkvm uses them, not an AttributeError in a running guest."""
    target = uapi_build.Target()
    used = uapi_build.used_names(target.arch)
    assert used["KVM_RUN"] and used["VIRTIO_F_VERSION_1"]
    assert "KVM_ARM_VCPU_INIT" not in used or target.arch == "aarch64"  # arm/ is not x86's
    have = set(used) - {"KVM_SET_GSI_ROUTING"}
    with pytest.raises(SystemExit) as e:
        uapi_build.check_names(target, ["-isystem/old/include"], have)
    (line,) = str(e.value).splitlines()
    assert line.startswith("uapi_build: the uapi headers (/old/include) lack what lkvm uses: "
                           "KVM_SET_GSI_ROUTING (")
    uapi_build.check_names(target, [], set(used))  # all there: no complaint


def test_typedefs_of_128_bit_integers_are_left_out():
    """6.11's linux/types.h typedefs __s128 and __u128, which cffi cannot
    declare: the typedefs and fields of them are dropped, their structs
    kept partial."""
    decls = uapi_build.Declarations()
    src = ("typedef int __int128_t;\ntypedef signed __int128 __s128;\n"
           "typedef unsigned __int128 __u128;\nstruct pair { __u128 wide; int narrow; };\n")
    for node in uapi_build.c_parser.CParser().parse(src).ext[1:]:
        decls.add(node)
    text = "\n".join(decls.cdefs)
    assert "__int128" not in text and "wide" not in text
    assert "narrow" in text and "...;" in text
