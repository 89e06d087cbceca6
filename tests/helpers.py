"""Assertion helpers: relative error against a float64 reference, NaN-filled outputs."""
import torch


def nan_out(shape, dtype, device):
    """An output buffer pre-filled with NaN, so an element a kernel never writes fails the test."""
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max|out - ref| / max|ref| in float64; NaN anywhere in `out` gives inf."""
    out64, ref64 = out.detach().to("cpu", torch.float64), ref.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(out64).all()):
        return float("inf")
    return float((out64 - ref64).abs().max() / ref64.abs().max().clamp(min=1e-30))


def assert_close_rel(out, ref, tol, what=""):
    err = rel_err(out, ref)
    assert err <= tol, f"{what} relative error {err:.3e} > {tol:.1e}"
