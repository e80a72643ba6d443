"""ClipMemCap: a ClipCap-style video captioner with a Memorizing-Transformer memory over the frames."""

from clipmemcap.core.numerics import pin_torch

# before any module of the package imports torch: the same bytes on every AVX2 machine
pin_torch()
