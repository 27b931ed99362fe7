"""Rounding fp32 results to the output dtype.

Triton's CPU interpreter converts fp32 to bf16 by truncation, while the GPU rounds to nearest
even. So that tests under the interpreter check the same numbers a GPU produces, kernels round
bf16 explicitly (round to nearest even on the bit pattern) when interpreted. On a GPU the
constexpr flag is False and this is a plain cast.
"""

from cachekern.kernels._backend import INTERPRET, tl, triton

EXPLICIT_BF16_ROUNDING = INTERPRET

if triton is not None:

    @triton.jit
    def cast_to(y, dtype: tl.constexpr, EXPLICIT_BF16: tl.constexpr):
        if EXPLICIT_BF16 and dtype == tl.bfloat16:
            bits = y.to(tl.uint32, bitcast=True)
            bits = (bits + (((bits >> 16) & 1) + 0x7FFF)) & 0xFFFF0000
            rounded = tl.where(y != y, y, bits.to(tl.float32, bitcast=True))  # keep NaN a NaN
            return rounded.to(dtype)
        return y.to(dtype)
