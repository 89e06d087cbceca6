"""python -m lowbit import on whole checkpoint directories, one tiny random model per format.

Each source is a tiny random model saved with save_pretrained whose linear layers are then
replaced by the format's tensors: packed by the real libraries where they install here
(compressed-tensors, hqq, transformers' BitNet packer) and by the hand packers of
tests/importers/packers.py for GPTQ and AutoAWQ (their libraries need CUDA builds). The
converted directory is loaded with AutoModelForCausalLM.from_pretrained (lowbit.hf). Checks:
every quantized layer dequantizes to the format's own values (exactly; to HQQ's rounding for
HQQ), every other tensor is unchanged, the model runs under the kernels and matches the float
model carrying the format's dequantized weights; refusals leave no destination behind.
"""
import copy
import json
import os
import subprocess
import sys

import pytest
import torch

import lowbit
from lowbit import QuantLinear
from lowbit.__main__ import main as lowbit_main
from lowbit.importers.checkpoint import ConversionRefused, convert_checkpoint

from helpers import assert_close
from packers import awq_pack, gptq_pack_qweight, gptq_pack_qzeros

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")
hf = pytest.importorskip("lowbit.hf")

VOCAB = 96
TOL_MODEL = 1e-3  # fp32 kernels through two blocks (see tests/hf/test_models.py)


def tiny_llama():
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(cfg).eval()


def linears(model):
    return {n: m for n, m in model.named_modules() if type(m) is torch.nn.Linear and n != "lm_head"}


def rtn(w, bits, gs, lo_zero=0):
    """Round-to-nearest asymmetric codes [N, K], integer zeros [G, N] (>= lo_zero), fp16 scales [G, N]."""
    n, k = w.shape
    wg = w.double().reshape(n, k // gs, gs)
    lo, hi = wg.amin(-1).clamp(max=0), wg.amax(-1).clamp(min=0)
    qmax = 2 ** bits - 1
    s = ((hi - lo) / qmax).clamp(min=1e-4).to(torch.float16)
    z = torch.round(-lo / s.double()).clamp(lo_zero, qmax).to(torch.int64)
    q = torch.round(wg / s.double().unsqueeze(-1) + z.unsqueeze(-1)).clamp(0, qmax).to(torch.int64)
    return q.reshape(n, k), z.t().contiguous(), s.t().contiguous()


def grouped(codes, zeros, scales, gs):
    gi = torch.arange(codes.shape[1]) // gs
    return scales[gi].t().double() * (codes - zeros[gi].t()).double()


def write_source(model, path, layer_tensors, quantization_config):
    """save_pretrained the float model, then replace each quantized layer's weight by its format tensors."""
    model.save_pretrained(path)
    st = path / "model.safetensors"
    sd = safetensors_torch.load_file(st)
    for prefix, tensors in layer_tensors.items():
        del sd[f"{prefix}.weight"]
        sd.update({f"{prefix}.{k}": v.contiguous() for k, v in tensors.items()})
    safetensors_torch.save_file(sd, st, metadata={"format": "pt"})
    cfg = json.loads((path / "config.json").read_text())
    if quantization_config is not None:
        cfg["quantization_config"] = quantization_config
    (path / "config.json").write_text(json.dumps(cfg))
    (path / "tokenizer_config.json").write_text("{}")  # stands for any side file that must be copied
    return sd


def build_gptq(path, bits=4, gs=32, fmt="gptq", act_order_layer=None):
    model = tiny_llama()
    expected = {}
    layers = {}
    for name, lin in linears(model).items():
        codes, zeros, scales = rtn(lin.weight.detach(), bits, gs, lo_zero=1 if fmt == "gptq" else 0)
        k = codes.shape[1]
        g_idx = (torch.arange(k) // gs).to(torch.int32)
        if name == act_order_layer:
            g_idx = g_idx[torch.randperm(k)]
        fields = zeros - 1 if fmt == "gptq" else zeros
        layers[name] = {"qweight": gptq_pack_qweight(codes, bits), "qzeros": gptq_pack_qzeros(fields, bits),
                        "scales": scales, "g_idx": g_idx}
        expected[name] = grouped(codes, zeros, scales, gs)
    qc = {"quant_method": "gptq", "bits": bits, "group_size": gs, "desc_act": act_order_layer is not None,
          "sym": False, "checkpoint_format": fmt}
    write_source(model, path, layers, qc)
    return model, expected


def build_awq(path, gs=32):
    model = tiny_llama()
    expected, layers = {}, {}
    for name, lin in linears(model).items():
        codes, zeros, scales = rtn(lin.weight.detach(), 4, gs)
        layers[name] = {"qweight": awq_pack(codes.t()), "qzeros": awq_pack(zeros), "scales": scales}
        expected[name] = grouped(codes, zeros, scales, gs)
    qc = {"quant_method": "awq", "bits": 4, "group_size": gs, "version": "gemm", "zero_point": True}
    write_source(model, path, layers, qc)
    return model, expected


def build_compressed_tensors(path, bits=4, gs=32, symmetric=False):
    pytest.importorskip("compressed_tensors")
    from compressed_tensors.compressors.pack_quantized import PackedQuantizationCompressor, unpack_from_int32
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from compressed_tensors.quantization.utils import calculate_qparams

    model = tiny_llama()
    args = QuantizationArgs(num_bits=bits, type="int", symmetric=symmetric, strategy="group", group_size=gs)
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    expected, layers = {}, {}
    for name, lin in linears(model).items():
        w = lin.weight.detach().to(torch.bfloat16)
        n, k = w.shape
        wg = w.float().reshape(n, k // gs, gs)
        scale, zp = calculate_qparams(wg.amin(-1), wg.amax(-1), args)
        packed = PackedQuantizationCompressor.compress(
            {"weight": w, "weight_scale": scale.to(torch.bfloat16), "weight_zero_point": zp}, scheme)
        layers[name] = packed
        peer = PackedQuantizationCompressor.decompress(dict(packed), scheme)["weight"]  # bf16, rounded once
        q = unpack_from_int32(packed["weight_packed"], bits, packed["weight_shape"]).double()
        z = unpack_from_int32(packed["weight_zero_point"], bits, torch.Size((n, k // gs)), packed_dim=0).double()
        exact = (q - z.repeat_interleave(gs, 1)) * packed["weight_scale"].double().repeat_interleave(gs, 1)
        assert torch.equal(exact.to(torch.bfloat16), peer)
        expected[name] = exact
    qc = {"quant_method": "compressed-tensors", "format": "pack-quantized", "ignore": ["lm_head"],
          "config_groups": {"group_0": {"targets": ["Linear"], "weights": args.model_dump(mode="json"),
                                        "input_activations": None, "format": "pack-quantized"}}}
    write_source(model, path, layers, qc)
    return model, expected


def build_hqq(path, nbits=4, gs=64, axis=1):
    hqq = pytest.importorskip("hqq.core.quantize")
    model = tiny_llama()
    expected, layers = {}, {}
    for name, lin in linears(model).items():
        h = hqq.HQQLinear(copy.deepcopy(lin), hqq.BaseQuantizeConfig(nbits=nbits, group_size=gs, axis=axis),
                          compute_dtype=torch.float16, device="cpu")
        layers[name] = {k: v for k, v in h.state_dict().items() if isinstance(v, torch.Tensor)}
        expected[name] = h.dequantize().double()
    qc = {"quant_method": "hqq", "quant_config": {"weight_quant_params": {"nbits": nbits, "group_size": gs}}}
    write_source(model, path, layers, qc)
    return model, expected


def build_bitnet(path, linear_class="bitlinear"):
    bitnet = pytest.importorskip("transformers.integrations.bitnet")
    cfg = transformers.BitNetConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                    eos_token_id=1, bos_token_id=0)
    model = transformers.BitNetForCausalLM(cfg).eval()
    expected, layers = {}, {}
    for name, lin in linears(model).items():
        w = lin.weight.detach().float()
        inv = (1.0 / w.abs().mean()).to(torch.bfloat16)  # bitlinear's weight_scale: W = T / weight_scale
        t = (w * inv.float()).round().clamp(-1, 1).to(torch.int64)
        ws = inv if linear_class == "bitlinear" else (1.0 / inv.float()).to(torch.bfloat16)
        layers[name] = {"weight": bitnet.pack_weights(t.clone()), "weight_scale": ws.reshape(1)}
        g = 1.0 / float(ws) if linear_class == "bitlinear" else float(ws)
        expected[name] = t.double() * float(torch.tensor(g, dtype=torch.float32))
    qc = {"quant_method": "bitnet", "linear_class": linear_class, "quantization_mode": "offline"}
    sd = write_source(model, path, {}, qc)  # BitLinear keeps the name "weight" for the packed tensor
    for name, tensors in layers.items():
        sd[f"{name}.weight"] = tensors["weight"]
        sd[f"{name}.weight_scale"] = tensors["weight_scale"]
    safetensors_torch.save_file(sd, path / "model.safetensors", metadata={"format": "pt"})
    return model, expected


def load(path):
    return transformers.AutoModelForCausalLM.from_pretrained(path).eval()


def check_converted(src_model, expected, dst, device, exact=True, tol=0.0, dtype=torch.float64):
    """`expected` holds the format's dequantized weights (float64); exact: lowbit's equal them."""
    model = load(dst)
    q = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    assert sorted(q) == sorted(expected)
    for name, w in expected.items():
        got = lowbit.dequantize(q[name].quantized_weight(), dtype).double()
        if exact:
            assert torch.equal(got, w), name
        else:
            assert float((got - w).abs().max()) <= tol * float(w.abs().max()), name
    # every other tensor is the source model's
    src_sd = src_model.state_dict()
    for key, t in model.state_dict().items():
        if key.rpartition(".")[0] not in q:
            assert torch.equal(t, src_sd[key]), key
    # the model runs on the kernels and matches the float model with the format's dequantized weights
    ref = copy.deepcopy(src_model)
    with torch.no_grad():
        for name, w in expected.items():
            ref.get_submodule(name).weight.copy_(w.float())
        model, ref = model.to(device), ref.to(device)
        ids = torch.randint(2, VOCAB, (2, 7), device=device)
        y = model(ids).logits
        for m in q.values():
            m.backend = "reference"
        y_ref = model(ids).logits
    assert_close("kernels vs reference", y_ref, y, TOL_MODEL)
    return model, ref, ids, y


@pytest.mark.parametrize("bits,fmt", [pytest.param(4, "gptq", id="int4-v1"), pytest.param(3, "gptq", id="int3-v1"),
                                      pytest.param(8, "gptq_v2", id="int8-v2"), pytest.param(2, "gptq", id="int2-v1")])
def test_gptq_checkpoint(tmp_path, bits, fmt, device):
    src, dst = tmp_path / "src", tmp_path / "dst"
    model, expected = build_gptq(src, bits=bits, fmt=fmt)
    report = convert_checkpoint(src, dst, "gptq")
    assert len(report.layers) == 14 and not report.refused
    assert all(r.target.startswith(f"int{bits} group_size=32") for r in report.layers)
    assert (dst / "tokenizer_config.json").is_file() and not (dst / "quantize_config.json").exists()
    q, ref, ids, y = check_converted(model, expected, dst, device)
    with torch.no_grad():
        assert_close("converted vs float model with GPTQ's weights", ref(ids).logits, y, TOL_MODEL)


def test_awq_checkpoint(tmp_path, device):
    src, dst = tmp_path / "src", tmp_path / "dst"
    model, expected = build_awq(src)
    convert_checkpoint(src, dst, "awq")
    q, ref, ids, y = check_converted(model, expected, dst, device)
    with torch.no_grad():
        assert_close("converted vs float model with AWQ's weights", ref(ids).logits, y, TOL_MODEL)


def test_compressed_tensors_checkpoint(tmp_path, device):
    src, dst = tmp_path / "src", tmp_path / "dst"
    model, expected = build_compressed_tensors(src)
    convert_checkpoint(src, dst, "compressed-tensors")
    # expected: the exact (q - zp) * scale from compressed-tensors' own unpacker (its decompress is that, rounded
    # once to bf16, checked in build_compressed_tensors)
    q, ref, ids, y = check_converted(model, expected, dst, device)
    with torch.no_grad():
        assert_close("converted vs float model with compressed-tensors' weights", ref(ids).logits, y, TOL_MODEL)


def test_hqq_checkpoint(tmp_path, device):
    src, dst = tmp_path / "src", tmp_path / "dst"
    model, expected = build_hqq(src)
    convert_checkpoint(src, dst, "hqq")
    # HQQ's dequantize rounds (q - zero) and the product to fp16: 2 ulp of fp16 relative to max|W|
    q, ref, ids, y = check_converted(model, expected, dst, device, exact=False, tol=2.0 ** -10)
    with torch.no_grad():
        assert_close("converted vs float model with HQQ's weights", ref(ids).logits, y, TOL_MODEL)


@pytest.mark.parametrize("linear_class", [pytest.param("bitlinear", id="bitlinear"),
                                          pytest.param("autobitlinear", id="autobitlinear")])
def test_bitnet_checkpoint(tmp_path, linear_class, device):
    src, dst = tmp_path / "src", tmp_path / "dst"
    model, expected = build_bitnet(src, linear_class)
    convert_checkpoint(src, dst, "bitnet")
    q = load(dst)
    layers = {n: m for n, m in q.named_modules() if isinstance(m, QuantLinear)}
    assert sorted(layers) == sorted(expected)
    for name, w in expected.items():
        assert layers[name].scheme.value == "ternary"
        assert torch.equal(lowbit.dequantize(layers[name].quantized_weight(), torch.float64), w), name
    q = q.to(device)
    ids = torch.randint(2, VOCAB, (1, 5), device=device)
    with torch.no_grad():
        y = q(ids).logits
        for m in layers.values():
            m.backend = "reference"
        assert_close("bitnet kernels vs reference", q(ids).logits, y, TOL_MODEL)


# -- refusals and bad input ---------------------------------------------------------------------------
def leftovers(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".lowbit-import-"))


def test_act_order_layer_refused_nothing_written(tmp_path, capsys):
    src, dst = tmp_path / "src", tmp_path / "dst"
    build_gptq(src, act_order_layer="model.layers.1.mlp.up_proj")
    with pytest.raises(ConversionRefused) as e:
        convert_checkpoint(src, dst, "gptq")
    bad = e.value.report.refused
    assert [r.name for r in bad] == ["model.layers.1.mlp.up_proj"] and "act-order" in bad[0].reason
    assert not dst.exists() and leftovers(tmp_path) == []
    assert lowbit_main(["import", "--from", "gptq", str(src), str(dst)]) == 1
    out = capsys.readouterr()
    assert "REFUSED model.layers.1.mlp.up_proj: gptq 4-bit group_size=32 checkpoint_format=gptq -> act-order" \
        in out.out
    assert "mapped model.layers.0.mlp.down_proj" in out.out and "1 of 14 layer(s) refused" in out.err
    assert not dst.exists()


def test_hqq_axis0_refused_names_layer(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    build_hqq(src, axis=0)
    with pytest.raises(ConversionRefused, match=r"model\.layers\.0\.mlp\.down_proj: HQQ axis=0"):
        convert_checkpoint(src, dst, "hqq")
    assert not dst.exists() and leftovers(tmp_path) == []


def test_wrong_format_existing_destination_and_missing_files(tmp_path):
    src = tmp_path / "src"
    build_awq(src)
    with pytest.raises(ValueError, match="is a 'awq' checkpoint, not 'gptq'"):
        convert_checkpoint(src, tmp_path / "dst", "gptq")
    (tmp_path / "exists").mkdir()
    with pytest.raises(FileExistsError, match="never overwrites"):
        convert_checkpoint(src, tmp_path / "exists", "awq")
    with pytest.raises(FileNotFoundError):
        convert_checkpoint(tmp_path / "nope", tmp_path / "dst", "awq")
    with pytest.raises(ValueError, match="unknown source format"):
        convert_checkpoint(src, tmp_path / "dst", "gguf")
    (src / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="no .safetensors files"):
        convert_checkpoint(src, tmp_path / "dst", "awq")
    assert leftovers(tmp_path) == []


def test_awq_gemv_refused(tmp_path):
    src = tmp_path / "src"
    build_awq(src)
    cfg = json.loads((src / "config.json").read_text())
    cfg["quantization_config"]["version"] = "gemv"
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConversionRefused, match="only the GEMM layout"):
        convert_checkpoint(src, tmp_path / "dst", "awq")


def test_cli_subprocess(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    build_awq(src)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-m", "lowbit", "import", "--from", "awq", str(src), str(dst)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "14 layer(s) mapped, 0 refused" in r.stdout and f"wrote {dst}" in r.stdout
    assert "mapped model.layers.0.self_attn.q_proj: awq 4-bit group_size=32 version=gemm -> int4 group_size=32 " \
           "symmetric=False" in r.stdout
    cfg = json.loads((dst / "config.json").read_text())["quantization_config"]
    assert cfg["quant_method"] == "lowbit" and len(cfg["layers"]) == 14


def test_sharded_source(tmp_path, device):
    """A source split over two safetensors shards with model.safetensors.index.json."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    model, expected = build_gptq(src)
    sd = safetensors_torch.load_file(src / "model.safetensors")
    (src / "model.safetensors").unlink()
    keys = sorted(sd)
    weight_map = {}
    for i, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2:])):
        name = f"model-0000{i + 1}-of-00002.safetensors"
        safetensors_torch.save_file({k: sd[k] for k in part}, src / name, metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    (src / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    report = convert_checkpoint(src, dst, "gptq")
    assert len(report.layers) == 14 and not report.refused
    assert sorted(p.name for p in dst.iterdir()) == ["config.json", "generation_config.json", "model.safetensors",
                                                    "tokenizer_config.json"]
    check_converted(model, expected, dst, device)
