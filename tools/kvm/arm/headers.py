"""The arm64 uapi headers lkvm binds, beside the generic ones (asm/kvm.h
comes with linux/kvm.h, and with it the core registers and the vGIC's
device attributes).  Kept free of imports: the binding build reads it
before any binding exists."""

UAPI_HEADERS = (
    "asm/kvm_para.h",
)
