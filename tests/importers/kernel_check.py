"""The kernel check every importer test ends with: lowbit.linear on the imported weight vs the float64 oracle."""
import torch

import lowbit

from helpers import assert_close

TOL_LAYER = 1e-4  # fp32 activations: K products rounded in fp32 (see tests/test_nn.py)


def check_kernel(qw, device, m=3):
    """lowbit.linear (Triton kernels; the interpreter on CPU) matches lowbit.reference.linear on `device`."""
    q = qw.to(device)
    x = torch.randn(m, qw.K, device=device)
    y = lowbit.linear(x, q)
    assert_close(f"{qw.scheme.value} kernel", lowbit.reference.linear(x, q, out_dtype=torch.float64), y, TOL_LAYER)
    return x, y
