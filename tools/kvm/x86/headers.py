"""The x86 uapi headers lkvm binds, beside the generic ones.  Kept free of
imports: the binding build reads it before any binding exists."""

UAPI_HEADERS = (
    "asm/bootparam.h",
    "asm/e820.h",
    "asm/processor-flags.h",
    "asm/kvm_para.h",
)
