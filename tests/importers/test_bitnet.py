"""BitNet b1.58 importer against transformers' own BitNet packer (transformers.integrations.bitnet.pack_weights).

Checks: the ternary values T survive exactly; gamma is weight_scale (autobitlinear) or
1 / weight_scale rounded to fp32 (bitlinear: relative error <= 2^-24, exact for powers of two);
lowbit.linear (W1.58A8 kernels) matches lowbit.reference.linear and, for bitlinear, the
BitLinear formula y = (x_q . T^T) / (s_x * weight_scale) evaluated in float64.
"""
import pytest
import torch

import lowbit
from lowbit.formats import Scheme
from lowbit.importers import Refused, from_bitnet
from lowbit.reference import ternary as ref_ternary

from helpers import assert_close
from kernel_check import TOL_LAYER, check_kernel

bitnet = pytest.importorskip("transformers.integrations.bitnet")


def ternary(n, k, seed=0):
    return torch.randint(-1, 2, (n, k), generator=torch.Generator().manual_seed(seed))


def packed(t):
    return bitnet.pack_weights(t.clone().to(torch.int64))  # transformers adds 1 in place


@pytest.mark.parametrize("ws", [pytest.param(0.25, id="pow2"), pytest.param(3.7, id="general")])
def test_bitlinear_exact_ternary_and_gamma(ws, device):
    n, k = 64, 96
    t = ternary(n, k)
    p = packed(t)
    assert p.dtype == torch.uint8 and p.shape == (n // 4, k)
    scale = torch.tensor([ws], dtype=torch.bfloat16)
    qw = from_bitnet(p, scale)
    assert qw.scheme is Scheme.TERNARY and qw.shape == (n, k)
    assert torch.equal(ref_ternary.ternary_values(qw), t)
    g_exact = 1.0 / float(scale.to(torch.float64))
    g = float(qw["gamma"][0])
    assert abs(g - g_exact) <= 2.0 ** -24 * g_exact
    if ws == 0.25:
        assert g == 4.0
    x, y = check_kernel(qw, device)
    x = x.cpu()
    xq, sx = ref_ternary.quantize_activations(x)  # BitNet's per-token absmax int8 (127 / absmax)
    bitlinear = (xq.to(torch.float64) @ t.t().to(torch.float64)) / (sx.to(torch.float64)[:, None] * float(scale))
    assert_close('test_bitnet', bitlinear, y, TOL_LAYER)


def test_autobitlinear_packed_and_unpacked():
    n, k = 32, 64
    t = ternary(n, k, 1)
    scale = torch.tensor([0.37], dtype=torch.bfloat16)
    a = from_bitnet(packed(t), scale, linear_class="autobitlinear")
    b = from_bitnet(t.to(torch.bfloat16), scale, linear_class="autobitlinear")
    assert float(a["gamma"][0]) == float(scale)
    for qw in (a, b):
        assert torch.equal(lowbit.dequantize(qw, torch.float64), t.to(torch.float64) * float(scale))


def test_refusals():
    t = ternary(8, 16)
    p = packed(t)
    bad = p.clone()
    bad[0, 0] |= 3  # field 0 of byte (0, 0) = 3
    with pytest.raises(Refused, match="holds the 2-bit value 3"):
        from_bitnet(bad, torch.ones(1))
    with pytest.raises(Refused, match="online"):
        from_bitnet(t.float() * 0.3, torch.ones(1), linear_class="autobitlinear")
    with pytest.raises(Refused, match="quantization_mode 'online'"):
        from_bitnet(t.float(), torch.ones(1))
    with pytest.raises(Refused, match="one float per tensor"):
        from_bitnet(p, torch.ones(8))
    with pytest.raises(Refused, match="unknown BitNet linear_class"):
        from_bitnet(p, torch.ones(1), linear_class="bitlinear2")
    with pytest.raises(ValueError, match="positive and finite"):
        from_bitnet(p, torch.zeros(1))
    with pytest.raises(ValueError, match="out_features=12"):
        from_bitnet(p, torch.ones(1), out_features=12)
