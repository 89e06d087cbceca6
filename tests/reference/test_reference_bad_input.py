"""Bad input raises ValueError/TypeError that names the problem (quantizer, container, reference)."""
import pytest
import torch

import lowbit
from lowbit import reference as ref
from lowbit.formats import QuantizedWeight


def test_unknown_scheme():
    with pytest.raises(ValueError, match="unknown scheme 'int5'"):
        lowbit.quantize_weight(torch.randn(4, 64), "int5")
    with pytest.raises(TypeError, match="scheme must be"):
        lowbit.quantize_weight(torch.randn(4, 64), 4)


def test_unknown_option():
    with pytest.raises(ValueError, match="unknown option"):
        lowbit.quantize_weight(torch.randn(4, 64), "int4", groupsize=64)
    with pytest.raises(ValueError, match="unknown option"):
        lowbit.quantize_weight(torch.randn(4, 64), "ternary", group_size=64)


@pytest.mark.parametrize("gs", [48, 0, 256])
def test_bad_group_size_value(gs):
    with pytest.raises(ValueError, match="group_size"):
        lowbit.quantize_weight(torch.randn(4, 64), "int4", group_size=gs)


def test_bad_option_types():
    with pytest.raises(TypeError, match="group_size"):
        lowbit.quantize_weight(torch.randn(4, 64), "int4", group_size=64.0)
    with pytest.raises(TypeError, match="symmetric"):
        lowbit.quantize_weight(torch.randn(4, 64), "int4", symmetric="yes")


def test_k_not_divisible_by_group_size():
    with pytest.raises(ValueError, match="not divisible by group_size"):
        lowbit.quantize_weight(torch.randn(4, 100), "int4", group_size=64)
    with pytest.raises(ValueError, match="not divisible by group_size"):
        lowbit.quantize_weight(torch.randn(4, 100), "nf4")


@pytest.mark.parametrize("shape", [(64,), (2, 4, 64)])
def test_wrong_rank(shape):
    with pytest.raises(ValueError, match="2-D"):
        lowbit.quantize_weight(torch.randn(shape), "int4", group_size=64)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights(bad):
    w = torch.randn(4, 64)
    w[1, 2] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        lowbit.quantize_weight(w, "int4", group_size=64)


@pytest.mark.parametrize("shape", [(0, 64), (4, 0)])
def test_empty_weight(shape):
    with pytest.raises(ValueError, match="empty"):
        lowbit.quantize_weight(torch.randn(shape), "int4", group_size=32)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int8, torch.bool])
def test_integer_weights(dtype):
    with pytest.raises(TypeError, match="floating point"):
        lowbit.quantize_weight(torch.ones(4, 64, dtype=dtype), "int4")


def test_not_a_tensor():
    with pytest.raises(TypeError, match="torch.Tensor"):
        lowbit.quantize_weight([[1.0, 2.0]], "int4")


@pytest.mark.parametrize("frac", [0.0, -0.1, 0.2])
def test_outlier_fraction_out_of_range(frac):
    with pytest.raises(ValueError, match="outlier_fraction"):
        lowbit.quantize_weight(torch.randn(8, 64), "sq3", outlier_fraction=frac)


def test_bad_sensitivity():
    w = torch.randn(8, 64)
    with pytest.raises(ValueError, match="sensitivity shape"):
        lowbit.quantize_weight(w, "lut3", sensitivity=torch.ones(8, 32))
    with pytest.raises(ValueError, match="non-negative"):
        lowbit.quantize_weight(w, "lut3", sensitivity=-torch.ones(8, 64))


def test_too_large_for_fp16_scales():
    with pytest.raises(ValueError, match="too large"):
        lowbit.quantize_weight(torch.full((2, 32), 1e9) * torch.tensor([1.0, -1.0]).repeat(16), "int4", group_size=32)


def _qw(scheme="int4", **o):
    return lowbit.quantize_weight(torch.randn(8, 64), scheme, **({"group_size": 32} | o) if scheme.startswith("int") else o)


def test_container_rejects_wrong_tensor_shape():
    qw = _qw()
    t = dict(qw.tensors, scales=qw["scales"][:1])
    with pytest.raises(ValueError, match="'scales' has shape"):
        QuantizedWeight(qw.scheme, qw.spec, qw.shape, t)


def test_container_rejects_wrong_dtype_and_missing():
    qw = _qw()
    with pytest.raises(TypeError, match="'qweight' has dtype"):
        QuantizedWeight(qw.scheme, qw.spec, qw.shape, dict(qw.tensors, qweight=qw["qweight"].float()))
    with pytest.raises(ValueError, match="missing tensors"):
        QuantizedWeight(qw.scheme, qw.spec, qw.shape, {"qweight": qw["qweight"]})


def test_container_rejects_spec_of_other_scheme():
    qw = _qw()
    with pytest.raises(TypeError, match="needs a"):
        QuantizedWeight("nf4", qw.spec, qw.shape, qw.tensors)


def test_container_rejects_bad_csr():
    qw = lowbit.quantize_weight(torch.randn(8, 64), "sq3", outlier_fraction=0.05)
    rp = qw["row_ptr"].clone()
    rp[2] = rp[-1]  # a row pointer that jumps to nnz and comes back down
    assert int(rp[3]) < int(rp[2])
    with pytest.raises(ValueError, match="not monotone"):
        QuantizedWeight(qw.scheme, qw.spec, qw.shape, dict(qw.tensors, row_ptr=rp))
    ci = qw["col_idx"].clone()
    ci[0] = 64
    with pytest.raises(ValueError, match="col_idx out of range"):
        QuantizedWeight(qw.scheme, qw.spec, qw.shape, dict(qw.tensors, col_idx=ci))
    with pytest.raises(ValueError, match="'lut' has shape"):
        QuantizedWeight(qw.scheme, qw.spec, qw.shape, dict(qw.tensors, lut=qw["lut"][:, :4]))


def test_reference_linear_bad_args():
    qw = _qw()
    with pytest.raises(ValueError, match="does not match the weight's K"):
        ref.linear(torch.randn(2, 63), qw)
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        ref.linear(torch.ones(2, 64, dtype=torch.int32), qw)
    assert ref.linear(torch.randn(0, 64), qw).shape == (0, 8)  # zero rows: empty output, as F.linear
    with pytest.raises(ValueError, match="bias must have shape"):
        ref.linear(torch.randn(2, 64), qw, torch.randn(7))
    with pytest.raises(TypeError, match="QuantizedWeight"):
        ref.linear(torch.randn(2, 64), torch.randn(8, 64))
