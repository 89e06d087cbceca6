"""The torch._int_mm int8 baseline of the sweep (providers.TorchIntMMPeer): labelled unavailable where it
cannot run, and, called directly on the CPU (where torch._int_mm also runs), equal to the W1.58A8 oracle."""
import pytest
import torch

from lowbit.perf.providers import PEERS, TorchIntMMPeer
from lowbit.perf.runner import PEER_NAMES

from helpers import assert_close


def test_registered_as_a_peer():
    assert "int_mm" in PEER_NAMES and PEERS["int_mm"] is TorchIntMMPeer
    assert TorchIntMMPeer.scheme == "ternary"


def test_unavailable_without_cuda_or_int_mm(monkeypatch):
    peer = TorchIntMMPeer()
    assert peer.unavailable(torch.device("cpu")) == "needs a CUDA GPU"
    monkeypatch.delattr(torch, "_int_mm")
    assert peer.unavailable(torch.device("cpu")) == f"torch {torch.__version__} has no torch._int_mm"
    assert peer.unavailable(torch.device("cuda")) == f"torch {torch.__version__} has no torch._int_mm"


@pytest.mark.parametrize("m", [pytest.param(1, id="m1"), pytest.param(33, id="m33")])
def test_cpu_run_matches_the_a8_oracle(m):
    """Same per-token quantizer and ternary codes as W1.58A8: the int32 product is exact, so only the fp32
    rescale (a few ulps) and the fp16 output rounding (2^-11 relative to max|y|) separate it from the oracle."""
    n, k = 48, 96
    prep = TorchIntMMPeer().prepare(torch.randn(n, k), torch.float16)
    assert prep.bits_per_weight == pytest.approx(8.0, abs=0.01) and prep.weight_bytes == n * k + 4
    w = prep.copies(1)[0]
    assert w.dtype == torch.int8 and w.shape == (n, k)
    x = torch.randn(m, k).to(torch.float16)
    y = prep.run(w, x)
    assert y.dtype == torch.float16 and y.shape == (m, n)
    assert_close("int_mm vs W1.58A8 oracle", prep.reference(x), y, 1e-3)


def test_cuda_small_m_fails_with_a_clear_error():
    """torch._int_mm rejects M <= 16 on CUDA; the provider says so (the sweep turns it into a note row)."""
    prep = TorchIntMMPeer().prepare(torch.randn(16, 32), torch.float16)
    with pytest.raises(ValueError, match="needs M > 16, got M=4"):
        prep.run(prep.copies(1)[0], _FakeCuda((4, 32)))


class _FakeCuda:
    """A stand-in for a CUDA activation (device and shape are all the M check reads), so it runs without a GPU."""

    def __init__(self, shape):
        self.shape = torch.Size(shape)
        self.device = torch.device("cuda")
