import os
import sys

KVM = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if KVM not in sys.path:
    sys.path.insert(0, KVM)
