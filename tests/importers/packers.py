"""Independent packers for the formats whose libraries need CUDA builds (GPTQ, AutoAWQ).

Written from the formats' published descriptions (AutoGPTQ's ``QuantLinear.pack``, AutoAWQ's
``WQLinear_GEMM.from_linear``), word by word with Python ints, not from lowbit's code, so a
layout mistake in the importers cannot cancel out here.
"""
import torch

AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


def to_int32(rows):
    t = torch.tensor(rows, dtype=torch.int64)
    return torch.where(t >= 2 ** 31, t - 2 ** 32, t).to(torch.int32)


def gptq_pack_column(values, bits):
    """One column's codes -> its int32 words, as AutoGPTQ's pack loop writes them (3-bit: 32 codes in 3 words)."""
    words = []
    i = 0
    while i < len(values):
        if bits in (2, 4, 8):
            per = 32 // bits
            words.append(sum(values[i + j] << (bits * j) for j in range(per)))
            i += per
        else:  # 3-bit: codes 0-9, code 10 split 2+1, codes 11-20, code 21 split 1+2, codes 22-31
            v = values[i:i + 32]
            w0 = sum(v[j] << (3 * j) for j in range(10)) | ((v[10] << 30) & 0xFFFFFFFF)
            w1 = ((v[10] >> 2) & 1) | sum(v[11 + j] << (3 * j + 1) for j in range(10)) | ((v[21] << 31) & 0xFFFFFFFF)
            w2 = ((v[21] >> 1) & 3) | sum(v[22 + j] << (3 * j + 2) for j in range(10))
            words += [w0, w1, w2]
            i += 32
    return words


def gptq_pack_qweight(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """codes [N, K] -> qweight int32 [K*bits/32, N] (packed along K)."""
    cols = [gptq_pack_column(row, bits) for row in codes.tolist()]  # per output n
    return to_int32([list(r) for r in zip(*cols)])


def gptq_pack_qzeros(fields: torch.Tensor, bits: int) -> torch.Tensor:
    """zero fields [G, N] -> qzeros int32 [G, N*bits/32] (packed along N)."""
    return to_int32([gptq_pack_column(row, bits) for row in fields.tolist()])


def awq_pack(values: torch.Tensor) -> torch.Tensor:
    """int4 values [R, C] -> AWQ words [R, C/8]: nibble i of word j holds column 8j + AWQ_ORDER[i]."""
    rows = []
    for row in values.tolist():
        rows.append([sum(row[8 * j + AWQ_ORDER[i]] << (4 * i) for i in range(8)) for j in range(len(row) // 8)])
    return to_int32(rows)
