"""quantize_'s swap is all or nothing, and layers shared under several names (ties) stay tied."""
import pytest
import torch
from torch import nn

import lowbit
from lowbit import QuantLinear


class Refusing(nn.Module):
    """A parent whose __setattr__ refuses a new value for one child (as frozen or guarded modules do)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(64, 32)
        self.b = nn.Linear(64, 32)
        self.c = nn.Linear(64, 32)

    def __setattr__(self, name, value):
        if name == "c" and isinstance(value, QuantLinear):
            raise RuntimeError("this parent does not allow replacing 'c'")
        super().__setattr__(name, value)


def test_a_refused_swap_leaves_the_model_unchanged():
    model = nn.Sequential(nn.Linear(64, 64), Refusing())
    before = {n: m for n, m in model.named_modules()}
    with pytest.raises(RuntimeError, match="does not allow replacing 'c'"):
        lowbit.quantize_(model, "int4", group_size=32, backend="reference")
    after = {n: m for n, m in model.named_modules()}
    assert after.keys() == before.keys()
    assert all(after[n] is before[n] for n in before)  # the swaps made before the refusal were undone
    assert not any(isinstance(m, QuantLinear) for m in model.modules())


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(64, 64)
        self.lm_head = self.proj  # one module, two names


def test_a_tie_half_skipped_stays_in_float_with_a_warning():
    model = Tied()
    with pytest.warns(UserWarning, match=r"shared as \['proj', 'lm_head'\] in float"):
        lowbit.quantize_(model, "int4", group_size=32, backend="reference")  # lm_head is skipped by default
    assert type(model.proj) is nn.Linear and model.lm_head is model.proj


def test_a_tie_selected_under_every_name_becomes_one_quant_linear():
    model = Tied()
    lowbit.quantize_(model, "int4", group_size=32, skip=(), backend="reference")
    assert isinstance(model.proj, QuantLinear) and model.lm_head is model.proj
    x = torch.randn(3, 64)
    assert torch.equal(model.lm_head(x), model.proj(x))
