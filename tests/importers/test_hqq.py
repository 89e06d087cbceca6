"""HQQ importer against the real hqq quantizer (HQQLinear on CPU).

HQQ quantizes and packs each layer itself; the import reads HQQLinear.state_dict() (the
safetensors-encoded form transformers saves). Checks:
- lowbit holds exactly HQQ's codes, scales and zeros: evaluating HQQ's own formula in its
  compute dtype, ((q - zero) rounded) * scale rounded, on lowbit's stored tensors reproduces
  HQQLinear.dequantize() bit for bit;
- lowbit.dequantize, the exact (q - zero) * scale, differs from HQQ's two-step result by at most
  HQQ's two roundings: |diff| <= ulp(q - zero) / 2 * |scale| + ulp(result) / 2 per element,
  bounded here by 2 * 2^-p * (max |q - zero| * |scale|) with p the compute dtype's mantissa bits;
- lowbit.linear matches lowbit.reference.linear.
"""
import pytest
import torch

import lowbit
from lowbit.importers import Refused, from_hqq, from_hqq_state
from lowbit.reference import unpack_codes

from kernel_check import check_kernel

hqq_quantize = pytest.importorskip("hqq.core.quantize")
HQQLinear, BaseQuantizeConfig = hqq_quantize.HQQLinear, hqq_quantize.BaseQuantizeConfig

MANTISSA = {torch.float16: 11, torch.bfloat16: 8}


def hqq_layer(n, k, nbits, group, dtype=torch.float16, axis=1, view_as_float=False, seed=0):
    torch.manual_seed(seed)
    lin = torch.nn.Linear(k, n, bias=False)
    cfg = BaseQuantizeConfig(nbits=nbits, group_size=group, axis=axis, view_as_float=view_as_float)
    return HQQLinear(lin, cfg, compute_dtype=dtype, device="cpu", del_orig=False)


def stored(qw):
    """(codes [N, K], zeros [N, K], scales [N, K]) as lowbit stores them, expanded per element, float64."""
    n, k = qw.shape
    g = qw.group_size
    q = unpack_codes(qw["qweight"], qw.bits, k).to(torch.float64)
    s = qw["scales"].t().to(torch.float64).repeat_interleave(g, dim=1)
    z = qw["zeros"].t().to(torch.float64).repeat_interleave(g, dim=1)
    return q, z, s, qw["scales"].dtype


CASES = [
    pytest.param(4, 64, torch.float16, id="4bit-g64-fp16"),
    pytest.param(4, 128, torch.bfloat16, id="4bit-g128-bf16"),
    pytest.param(3, 64, torch.float16, id="3bit-g64"),
    pytest.param(2, 32, torch.float16, id="2bit-g32"),
    pytest.param(1, 32, torch.float16, id="1bit-g32"),
    pytest.param(8, 128, torch.float16, id="8bit-g128"),
    pytest.param(4, None, torch.float16, id="4bit-perchannel"),
    pytest.param(1.58, 64, torch.float16, id="1.58bit-g64"),
]


@pytest.mark.parametrize("nbits,group,dtype", CASES)
def test_real_hqq_layer(nbits, group, dtype, device):
    n, k = 48, 256
    h = hqq_layer(n, k, nbits, group, dtype)
    qw = from_hqq_state(h.state_dict())
    peer = h.dequantize()
    assert peer.dtype == dtype and qw.shape == (n, k)
    assert qw.spec.group_size == (-1 if group is None else group)
    q, z, s, sdt = stored(qw)
    assert sdt == dtype and qw["zeros"].dtype == dtype
    hqq_formula = ((q.to(dtype) - z.to(dtype)) * s.to(dtype))  # HQQ's two-step evaluation
    assert torch.equal(hqq_formula, peer)
    exact = lowbit.dequantize(qw, torch.float64)
    bound = 2.0 ** (1 - MANTISSA[dtype]) * float(((q - z).abs() * s.abs()).max())
    assert float((exact - peer.to(torch.float64)).abs().max()) <= bound
    check_kernel(qw, device)


def test_view_as_float_and_direct_call():
    h = hqq_layer(32, 128, 4, 64, view_as_float=True)
    state = h.state_dict()
    assert state["W_q"].dtype == torch.float16  # the packed bytes viewed as fp16
    a = from_hqq_state(state)
    b = from_hqq(h.W_q.data.view(torch.uint8), h.meta["scale"], h.meta["zero"], nbits=4, group_size=64,
                 shape=(32, 128))
    assert torch.equal(lowbit.dequantize(a), lowbit.dequantize(b))


def test_axis_0_refused():
    h = hqq_layer(32, 128, 4, 64, axis=0)
    with pytest.raises(Refused, match="axis=0"):
        from_hqq_state(h.state_dict())


def test_groups_straddling_rows_refused():
    h = hqq_layer(32, 96, 4, 64)  # 96 inputs, groups of 64 consecutive flattened elements
    with pytest.raises(Refused, match="group_size=64 does not divide in_features K=96"):
        from_hqq_state(h.state_dict())


def test_quantized_meta_refused_and_bad_state():
    h = hqq_layer(32, 128, 4, 64)
    state = h.state_dict()
    with pytest.raises(Refused, match="quant_scale/quant_zero"):
        from_hqq_state({**state, "quant_scale": torch.tensor(1, dtype=torch.uint8)})
    with pytest.raises(Refused, match="'zero_scale'"):
        from_hqq_state({**state, "zero_scale": torch.zeros(2, 4)})
    with pytest.raises(ValueError, match=r"lacks \['scale'\]"):
        from_hqq_state({k: v for k, v in state.items() if k != "scale"})
    with pytest.raises(Refused, match="nbits=5.5"):
        from_hqq(state["W_q"], state["scale"], state["zero"], nbits=5.5, group_size=64, shape=(32, 128))
    with pytest.raises(ValueError, match="scale has 32 values, expected 64"):
        from_hqq(state["W_q"], state["scale"][:32], state["zero"], nbits=4, group_size=64, shape=(32, 128))
    with pytest.raises(ValueError, match="holds 64 rows, expected 128"):
        from_hqq(state["W_q"], state["scale"].repeat(2, 1), state["zero"].repeat(2, 1), nbits=4, group_size=32,
                 shape=(32, 128))
