"""lut/sq quantizers reject weights fp16 cannot hold (tables and outliers are stored in fp16), as nf4 and
the uniform schemes do, instead of storing inf."""
import pytest
import torch

import lowbit


@pytest.mark.parametrize("scheme", ["lut3", "lut4", "sq3", "sq4", "nf4"])
@pytest.mark.parametrize("big", [1e5, -7e4, 65520.0])
def test_weights_too_large_for_fp16_are_rejected(scheme, big):
    w = torch.randn(8, 64)
    w[3, 17] = big
    opts = {"iters": 2} if scheme != "nf4" else {}
    with pytest.raises(ValueError, match="too large for fp16"):
        lowbit.quantize_weight(w, scheme, **opts)


@pytest.mark.parametrize("scheme", ["lut3", "lut4", "sq3", "sq4"])
def test_fp16_max_is_still_stored_exactly(scheme):
    """|w| up to 65504 (the largest fp16) quantizes to finite tables; an sq outlier keeps it exactly."""
    w = torch.randn(8, 64)
    w[3, 17] = -65504.0
    qw = lowbit.quantize_weight(w, scheme, iters=2)
    assert all(bool(torch.isfinite(t).all()) for t in qw.tensors.values() if t.dtype.is_floating_point)
    if scheme.startswith("sq"):
        assert float(lowbit.reference.dequantize(qw, torch.float64)[3, 17]) == -65504.0
