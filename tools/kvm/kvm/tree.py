"""Where lkvm's own tree is.  The arches' default kernel paths are
relative to its top, as kvmtool's are to the tool in tools/kvm."""

import os

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
KVMDIR = os.path.join(TOP, "tools", "kvm")
