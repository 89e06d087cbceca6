"""lowbit.linear's edges, common to every family: zero rows, edited weights, calls from several threads."""
import threading

import pytest
import torch

import lowbit
from helpers import assert_close
from lowbit.formats import QuantizedWeight

N, K = 48, 128
SCHEMES = {"int4": {"group_size": 64}, "nf4": {}, "lut3": {"iters": 2}, "ternary": {}, "binary": {}}


def _qw(scheme):
    return lowbit.quantize_weight(torch.randn(N, K), scheme, **SCHEMES[scheme])


@pytest.mark.parametrize("scheme", list(SCHEMES))
@pytest.mark.parametrize("shape", [(0, K), (2, 0, K), (0, 3, K)], ids=["0xK", "2x0xK", "0x3xK"])
def test_zero_rows_match_f_linear(scheme, shape, device):
    qw = _qw(scheme).to(device)
    x = torch.randn(shape, device=device, dtype=torch.float16)
    bias = torch.randn(N, device=device, dtype=torch.float16)
    y = lowbit.linear(x, qw, bias)
    want = torch.nn.functional.linear(x, torch.zeros(N, K, device=device, dtype=torch.float16), bias)
    assert y.shape == want.shape == (*shape[:-1], N) and y.dtype == want.dtype
    assert lowbit.reference.linear(x, qw, bias).shape == want.shape


@pytest.mark.parametrize("edit,exc,match", [
    pytest.param(lambda t: t.pop("qweight"), ValueError, r"missing tensors \['qweight'\]", id="deleted-qweight"),
    pytest.param(lambda t: t.pop("scales"), ValueError, r"missing tensors \['scales'\]", id="deleted-scales"),
    pytest.param(lambda t: t.update(qweight=t["qweight"][:, :N - 1]), ValueError, "'qweight' has shape",
                 id="narrowed-columns"),
    pytest.param(lambda t: t.update(qweight=t["qweight"][:-1]), ValueError, "'qweight' has shape", id="shorter"),
    pytest.param(lambda t: t.update(scales=t["scales"].double()), TypeError, "'scales' has dtype", id="fp64-scales"),
    pytest.param(lambda t: t.update(zeros=[0.0]), TypeError, "'zeros' must be a torch.Tensor", id="not-a-tensor"),
])
def test_an_edited_weight_gives_a_clear_error(edit, exc, match, device):
    """QuantizedWeight.tensors edited after construction: every entry point names the problem."""
    qw = _qw("int4").to(device)
    edit(qw.tensors)
    x = torch.randn(2, K, device=device)
    for fn in (lowbit.linear, lowbit.reference.linear):
        with pytest.raises(exc, match=match):
            fn(x, qw)
    with pytest.raises(exc, match=match):
        lowbit.dequantize(qw)


def test_a_meta_weight_gives_a_clear_error():
    with pytest.raises(ValueError, match="meta device"):
        lowbit.quantize_weight(torch.empty(N, K, device="meta"), "int4")


def test_calls_from_several_threads_agree_with_one_thread(device):
    """The interpreter's state is global: lowbit serialises launches on it, so threads never see each other's."""
    qws = [_qw(s).to(device) for s in ("int4", "nf4", "ternary")]
    xs = [torch.randn(3, K, device=device) for _ in qws]
    want = [lowbit.linear(x, qw) for x, qw in zip(xs, qws)]
    errors, results = [], {}

    def work(i):
        try:
            for r in range(3):
                results[(i, r)] = lowbit.linear(xs[i % 3], qws[i % 3])
        except Exception as e:  # recorded and re-raised by the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors
    assert len(results) == 18
    for (i, _), y in results.items():
        assert torch.equal(y, want[i % 3])


def test_weights_from_empty_are_layout_valid():
    for scheme, opts in SCHEMES.items():
        opts = {k: v for k, v in opts.items() if k != "iters"}
        qw = QuantizedWeight.empty(scheme, (N, K), **opts)
        qw.check_layout()
        assert qw.device.type == "meta" and qw.bits_per_weight > 0


@pytest.mark.parametrize("path", ["gemv", "gemm"])
def test_tiny_weights_with_fp32_scales_run_on_the_kernels(path, device):
    """Weights whose scales fall below fp16's normal range store fp32 scales; the kernels read them."""
    qw = lowbit.quantize_weight(torch.randn(N, K) * 1e-5, "int4", group_size=64).to(device)
    assert qw["scales"].dtype == torch.float32
    x = torch.randn(5, K, device=device)
    want = lowbit.reference.linear(x, qw, out_dtype=torch.float64)
    assert_close(f"int4 1e-5 {path}", want, lowbit.linear(x, qw, path=path), 2e-4)
