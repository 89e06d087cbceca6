"""Importers: SqueezeLLM and bitsandbytes NF4 layouts, built here by small independent packers.

Each test packs known codes in the foreign layout, imports, and checks that
dequantize(imported) equals the intended weights exactly (float64, no tolerance).
"""
import pytest
import torch

import lowbit
from helpers import assert_close
from lowbit.formats import Scheme
from lowbit.importers import from_bnb_nf4, from_squeezellm
from lowbit.reference.nf4 import NF4_VALUES


# -- independent packers (written from the layouts' descriptions, not from lowbit's code) -------------
def squeezellm_pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """codes [N, K] -> SqueezeLLM qweight [K*bits/32, N] int32, word by word as SqueezeLLM describes it."""
    n, k = codes.shape
    c = codes.t().tolist()  # c[k][n]
    rows = []
    for col in range(n):
        words = []
        if bits == 4:
            for base in range(0, k, 8):
                words.append(sum(c[base + j][col] << (4 * j) for j in range(8)))
        else:
            for base in range(0, k, 32):
                v = [c[base + j][col] for j in range(32)]
                w0 = sum(v[j] << (3 * j) for j in range(10)) | ((v[10] & 3) << 30)
                w1 = (v[10] >> 2) | sum(v[11 + j] << (3 * j + 1) for j in range(10)) | ((v[21] & 1) << 31)
                w2 = (v[21] >> 1) | sum(v[22 + j] << (3 * j + 2) for j in range(10))
                words += [w0, w1, w2]
        rows.append(words)
    t = torch.tensor(rows, dtype=torch.int64).t()  # [W, N]
    return torch.where(t >= 2 ** 31, t - 2 ** 32, t).to(torch.int32).contiguous()


def bnb_pack(codes: torch.Tensor) -> torch.Tensor:
    """bitsandbytes NF4 bytes: flattened row-major codes, element 2i in the high nibble of byte i."""
    flat = codes.reshape(-1).tolist()
    if len(flat) % 2:
        flat.append(0)
    return torch.tensor([(flat[i] << 4) | flat[i + 1] for i in range(0, len(flat), 2)], dtype=torch.uint8).reshape(-1, 1)


def test_squeezellm_three_bit_known_words():
    """Code 10 = 5 (0b101) straddles words 0 and 1: its low two bits end word 0, its top bit starts word 1."""
    codes = torch.zeros(1, 32, dtype=torch.int64)
    codes[0, 10] = 5
    assert squeezellm_pack(codes, 3)[:, 0].tolist() == [1 << 30, 1, 0]
    codes = torch.zeros(1, 32, dtype=torch.int64)
    codes[0, 21] = 6  # 0b110: low bit 0 at word 1 bit 31, then 0b11 at word 2 bits 0-1
    assert squeezellm_pack(codes, 3)[:, 0].tolist() == [0, 0, 3]
    qw = from_squeezellm(squeezellm_pack(codes, 3), torch.arange(8, dtype=torch.float32).repeat(1, 1), shape=(1, 32))
    assert lowbit.dequantize(qw, torch.float64)[0].tolist() == [6.0 if j == 21 else 0.0 for j in range(32)]


def _csr(n, k, g, heavy_row=3):
    """CSR over rows with one heavy row, a few light rows, and many empty rows."""
    dense = torch.zeros(n, k, dtype=torch.float64)
    dense[heavy_row, torch.randperm(k, generator=g)[: k // 4]] = 1
    dense[0, 5] = 1
    dense[n - 1, [0, k - 1]] = 1
    rows, cols = dense.nonzero(as_tuple=True)
    vals = torch.randn(rows.numel(), generator=g, dtype=torch.float64).to(torch.float32)
    row_ptr = torch.zeros(n + 1, dtype=torch.int32)
    row_ptr[1:] = torch.bincount(rows, minlength=n).cumsum(0).to(torch.int32)
    return row_ptr, cols.to(torch.int32), vals, rows


@pytest.mark.parametrize("bits,n,k", [(3, 24, 96), (4, 24, 96), (3, 5, 32), (4, 7, 40)])
@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("lut_dtype", [torch.float32, torch.float16])
def test_from_squeezellm_exact(bits, n, k, sparse, lut_dtype):
    g = torch.Generator().manual_seed(bits * 100 + n + k)
    codes = torch.randint(0, 2 ** bits, (n, k), generator=g)
    codes[0] = 2 ** bits - 1  # all-ones words exercise the sign bit
    lut = torch.randn(n, 2 ** bits, generator=g).to(lut_dtype)
    intended = torch.gather(lut.double(), 1, codes)
    extra = {}
    if sparse:
        row_ptr, cols, vals, rows = _csr(n, k, g, heavy_row=min(3, n - 1))
        intended.index_put_((rows, cols.long()), vals.double(), accumulate=True)
        extra = dict(rows=row_ptr, cols=cols, vals=vals)
    qw = from_squeezellm(squeezellm_pack(codes, bits), lut, **extra, shape=(n, k))
    assert qw.scheme.value == ("sq" if sparse else "lut") + str(bits)
    assert torch.equal(lowbit.dequantize(qw, torch.float64), intended)
    assert qw["lut"].dtype == lut_dtype


def test_squeezellm_import_runs_on_the_kernels(device):
    """An imported sq3 weight (fp32 table and outliers) through lowbit.linear on both paths."""
    g = torch.Generator().manual_seed(5)
    n, k = 40, 96
    codes = torch.randint(0, 8, (n, k), generator=g)
    row_ptr, cols, vals, _ = _csr(n, k, g)
    qw = from_squeezellm(squeezellm_pack(codes, 3), torch.randn(n, 8, generator=g), row_ptr, cols, vals,
                         shape=(n, k)).to(device)
    x = torch.randn(3, k, device=device)
    ref = lowbit.reference.linear(x, qw, out_dtype=torch.float64)
    for path in ("gemv", "gemm"):
        # fp32 activations: exact ieee dots; 2e-5 covers fp32 summation (see test_kernels_lut.py)
        assert_close(path, ref, lowbit.linear(x, qw, path=path), 2e-5)


@pytest.mark.parametrize("n,k,bs,group", [(6, 64, 64, -1), (6, 128, 64, 64), (5, 96, 32, 32), (4, 128, 256, -1), (3, 384, 128, 128),
                                          (7, 192, 64, 64), (3, 256, 512, -1), (40, 128, 4096, -1),
                                          (3, 33, 66, -1), (5, 128, 1024, -1), (2, 512, 256, 128)])
def test_from_bnb_nf4_exact(n, k, bs, group):
    g = torch.Generator().manual_seed(n * k + bs)
    codes = torch.randint(0, 16, (n, k), generator=g)
    total = n * k
    blocks = -(-total // bs)
    absmax = torch.rand(blocks, generator=g) * 3 + 0.01
    table = torch.tensor(NF4_VALUES, dtype=torch.float64)
    block_of = torch.arange(total) // bs
    intended = (table[codes.reshape(-1)] * absmax.double()[block_of]).reshape(n, k)
    qw = from_bnb_nf4(bnb_pack(codes), absmax, bs, (n, k))
    assert qw.scheme is Scheme.NF4 and qw.spec.group_size == group
    assert torch.equal(lowbit.dequantize(qw, torch.float64), intended)


def test_bnb_nibble_order_known_byte():
    """Byte 0x3C holds element 0 = 3 (high nibble) and element 1 = 12 (low nibble)."""
    packed = torch.full((32,), 0x3C, dtype=torch.uint8)
    qw = from_bnb_nf4(packed, torch.ones(1), 64, (1, 64))
    w = lowbit.dequantize(qw, torch.float64)[0]
    assert w[0].item() == NF4_VALUES[3] and w[1].item() == NF4_VALUES[12]


def test_bnb_non_uint8_storage_is_read_as_bytes():
    codes = torch.randint(0, 16, (4, 64))
    absmax = torch.rand(4) + 0.5
    raw = bnb_pack(codes)
    a = from_bnb_nf4(raw, absmax, 64, (4, 64))
    b = from_bnb_nf4(raw.reshape(-1).view(torch.float16), absmax, 64, (4, 64))  # quant_storage=fp16
    assert torch.equal(lowbit.dequantize(a, torch.float64), lowbit.dequantize(b, torch.float64))


# -- malformed input ---------------------------------------------------------------------------------
def _sq_parts(n=8, k=64, bits=3):
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 2 ** bits, (n, k), generator=g)
    row_ptr, cols, vals, _ = _csr(n, k, g)
    return squeezellm_pack(codes, bits), torch.randn(n, 2 ** bits, generator=g), row_ptr, cols, vals


def test_squeezellm_malformed():
    qweight, lut, rp, cols, vals = _sq_parts()
    with pytest.raises(ValueError, match="qweight has shape"):
        from_squeezellm(qweight[:-1], lut, shape=(8, 64))
    with pytest.raises(TypeError, match="qweight must be int32"):
        from_squeezellm(qweight.float(), lut, shape=(8, 64))
    with pytest.raises(ValueError, match=r"lookup_table must be \[N, 8\]"):
        from_squeezellm(qweight, torch.randn(8, 10), shape=(8, 64))
    with pytest.raises(ValueError, match="lookup_table has shape"):
        from_squeezellm(qweight, torch.randn(8, 16), shape=(8, 64), bits=3)
    with pytest.raises(ValueError, match="lookup_table has shape"):
        from_squeezellm(qweight, torch.randn(9, 8), shape=(8, 64))
    with pytest.raises(ValueError, match="NaN or Inf"):
        from_squeezellm(qweight, torch.full((8, 8), float("nan")), shape=(8, 64))
    with pytest.raises(ValueError, match="multiple of 32"):
        from_squeezellm(torch.zeros(6, 8, dtype=torch.int32), lut, shape=(8, 80))
    with pytest.raises(ValueError, match="bits=5"):
        from_squeezellm(qweight, lut, shape=(8, 64), bits=5)
    with pytest.raises(TypeError, match="shape must be"):
        from_squeezellm(qweight, lut, shape=64)
    with pytest.raises(ValueError, match="given together"):
        from_squeezellm(qweight, lut, rp, shape=(8, 64))
    with pytest.raises(ValueError, match="rows has 8 entries"):
        from_squeezellm(qweight, lut, rp[:-1], cols, vals, shape=(8, 64))
    bad = rp.clone()
    bad[2] = int(rp[3]) + 1  # rows 2 -> 3 now decrease
    with pytest.raises(ValueError, match="not monotone"):
        from_squeezellm(qweight, lut, bad, cols, vals, shape=(8, 64))
    bad_cols = cols.clone()
    bad_cols[1] = 64
    with pytest.raises(ValueError, match="out of range"):
        from_squeezellm(qweight, lut, rp, bad_cols, vals, shape=(8, 64))
    with pytest.raises(ValueError, match="vals has shape"):
        from_squeezellm(qweight, lut, rp, cols, vals[:-1], shape=(8, 64))
    with pytest.raises(TypeError, match="vals must be float16"):
        from_squeezellm(qweight, lut, rp, cols, vals.double(), shape=(8, 64))
    with pytest.raises(TypeError, match="cols must be a 1-D int32"):
        from_squeezellm(qweight, lut, rp, cols.float(), vals, shape=(8, 64))


def test_squeezellm_too_many_outliers():
    qweight, lut, _, _, _ = _sq_parts()
    rows, cols = torch.ones(8, 64).nonzero(as_tuple=True)  # 100% dense "outliers"
    rp = torch.arange(0, 8 * 64 + 1, 64, dtype=torch.int32)
    with pytest.raises(ValueError, match="at most 10%"):
        from_squeezellm(qweight, lut, rp, cols.to(torch.int32), torch.ones(512), shape=(8, 64))


def test_bnb_malformed():
    codes = torch.randint(0, 16, (4, 64))
    packed, absmax = bnb_pack(codes), torch.rand(4) + 0.5
    with pytest.raises(ValueError, match="packed has 127 bytes"):
        from_bnb_nf4(packed[:-1], absmax, 64, (4, 64))
    with pytest.raises(ValueError, match="absmax has shape"):
        from_bnb_nf4(packed, absmax[:-1], 64, (4, 64))
    with pytest.raises(ValueError, match="blocksize must be positive"):
        from_bnb_nf4(packed, absmax, 0, (4, 64))
    with pytest.raises(TypeError, match="blocksize must be an int"):
        from_bnb_nf4(packed, absmax, 64.0, (4, 64))
    with pytest.raises(ValueError, match="do not align"):
        from_bnb_nf4(packed, torch.rand(6), 48, (4, 64))  # 48-element blocks cut 32-wide groups
    with pytest.raises(ValueError, match="NaN or Inf"):
        from_bnb_nf4(packed, torch.full((4,), float("inf")), 64, (4, 64))
    with pytest.raises(TypeError, match="absmax must be float16"):
        from_bnb_nf4(packed, absmax.double(), 64, (4, 64))
    with pytest.raises(TypeError, match="packed must hold bytes"):
        from_bnb_nf4(torch.zeros(128, dtype=torch.bool), absmax, 64, (4, 64))
    with pytest.raises(ValueError, match="shape must be positive"):
        from_bnb_nf4(packed, absmax, 64, (0, 64))
