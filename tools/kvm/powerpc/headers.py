"""The powerpc uapi headers lkvm binds, beside the generic ones (asm/kvm.h
comes with linux/kvm.h: the registers, KVM_PPC_* structs and the radix MMU
configuration).  Kept free of imports: the binding build reads it before
any binding exists."""

UAPI_HEADERS = (
    "asm/kvm_para.h",
)
