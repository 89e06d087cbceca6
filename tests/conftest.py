"""Test setup: Triton's CPU interpreter when there is no GPU, a fixed seed, the `device` fixture.

TRITON_INTERPRET must be set before triton is imported; torch does not import triton, so
checking for CUDA first is safe. LOWBIT_TEST_INTERPRET=1 forces the interpreter on a GPU machine.
Shared helpers live in tests/helpers.py.
"""
import enum
import os

import torch

if not torch.cuda.is_available() or os.environ.get("LOWBIT_TEST_INTERPRET") == "1":
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

from helpers import DEVICE  # noqa: E402


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """An autotune cache of the test's own: user and shipped dirs under tmp_path, fresh in-memory tables."""
    from lowbit.autotune import cache

    monkeypatch.setenv("LOWBIT_CACHE_DIR", str(tmp_path / "user"))
    monkeypatch.delenv("LOWBIT_AUTOTUNE", raising=False)
    monkeypatch.setattr(cache, "SHIPPED_DIR", tmp_path / "shipped")
    cache.clear()
    yield
    cache.clear()


def _id(val):
    """A readable test id for the values tests parametrize over (None: pytest's own)."""
    from lowbit.kernels import KernelConfig

    if isinstance(val, torch.dtype):
        return str(val).removeprefix("torch.")
    if isinstance(val, KernelConfig):
        return val.label()
    if isinstance(val, enum.Enum):
        return str(val.value)
    if isinstance(val, type):
        return val.__name__
    if isinstance(val, (tuple, list)) and val and all(_id(v) is not None or isinstance(v, (int, str)) for v in val):
        return "-".join(_id(v) or str(v) for v in val)
    if isinstance(val, dict):
        return "-".join(f"{k}={_id(v) or v}" for k, v in val.items()) or "defaults"
    if val is None:
        return "none"
    return None


def pytest_make_parametrize_id(config, val, argname):
    return _id(val)
