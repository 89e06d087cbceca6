"""Test setup: Triton's CPU interpreter when there is no GPU, NaN-filled outputs, shared helpers.

TRITON_INTERPRET must be set before triton is imported; torch does not import triton, so
checking for CUDA first is safe. LOWBIT_TEST_INTERPRET=1 forces the interpreter on a GPU machine.
"""
import os

import torch

if not torch.cuda.is_available() or os.environ.get("LOWBIT_TEST_INTERPRET") == "1":
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRET else "cuda"


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
