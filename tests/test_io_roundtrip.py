"""Save -> load round trips at model level: every bits x format x layout x sym on fresh random codes (K not a
multiple of the group size), three architectures against the in-memory fake-quantized model, tokenizer files, and the
real `quantize` output. Small models only: this runs on CPU in CI."""
import json, warnings
import pytest, torch
from transformers import (AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM,
                          OPTConfig, OPTForCausalLM)
from transformers.utils import logging as hf_logging
from gptq_nb.quant import QuantizedWeight, QuantizeConfig, SUPPORTED_BITS, n_groups
from gptq_nb.pack import make_g_idx, fp16_scales
from gptq_nb.model import quantizable_linears
from gptq_nb.qlinear import QuantLinear
from gptq_nb.quantize import rtn_quantize_model
from gptq_nb.io import save_quantized, from_quantized
import gptq_nb.hf  # registers the transformers integration


@pytest.fixture(autouse=True)
def _float32_cpu_backend(monkeypatch):
    "These tests hold loaded logits to float32 at 1e-3 or tighter: the fp32 torch backend on CPU, not the bf16 int4 kernel (14_cpu)."
    import gptq_nb.cpu
    monkeypatch.setattr(gptq_nb.cpu, "ENABLED", False)

hf_logging.set_verbosity_error()
IDS = torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(0))


def tiny_llama(hidden=96, inter=160, tie=True, layers=1):
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                                        num_attention_heads=4, num_key_value_heads=4, vocab_size=128,
                                        tie_word_embeddings=tie)).eval()


def random_codes_model(bits, fmt, layout, sym, gs=64):
    "A model whose selected layers carry fresh random codes (not RTN's), as `quantize` would leave it."
    cfg = QuantizeConfig(bits=bits, group_size=gs, sym=sym, desc_act=layout != "plain", static_groups=layout == "static",
                         checkpoint_format=fmt)
    model, g = tiny_llama(), torch.Generator().manual_seed(bits * 7 + len(layout))
    for name, (m, _) in quantizable_linears(model, cfg).items():
        N, K = m.weight.shape; G = n_groups(K, gs); maxq = 2 ** bits - 1
        perm = torch.randperm(K, generator=g) if layout != "plain" else None
        zeros = (torch.full((G, N), float((maxq + 1) // 2)) if sym else
                 torch.randint(int(fmt == "gptq"), maxq + 1, (G, N), generator=g).float())   # v1 keeps zeros in 1..maxq
        qw = QuantizedWeight(torch.randint(0, maxq + 1, (N, K), generator=g).to(torch.uint8),
                             (torch.rand(G, N, generator=g) * 0.02 + 1e-3).half().float(), zeros,  # fp16-exact scales
                             make_g_idx(K, gs, perm, layout == "static"), bits, gs, sym, perm)
        m.weight.data = qw.dequantize(); m.gptq_result = qw
    model.gptq_config = cfg
    return model


@pytest.mark.parametrize("bits", SUPPORTED_BITS)
@pytest.mark.parametrize("fmt", ["gptq", "gptq_v2"])
@pytest.mark.parametrize("layout", ["plain", "act-order", "static"])
@pytest.mark.parametrize("sym", [True, False])
def test_matrix_roundtrip(tmp_path, bits, fmt, layout, sym):
    model = random_codes_model(bits, fmt, layout, sym)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # partial groups: the vLLM compatibility warning
        ck = save_quantized(model, tmp_path / "ck", dtype=torch.float32)
    assert json.loads((ck / "quantize_config.json").read_text())["checkpoint_format"] == fmt
    loaded = from_quantized(ck, dtype=torch.float32)
    orig = dict(model.named_modules())
    n = 0
    for name, m in loaded.named_modules():
        if not isinstance(m, QuantLinear): continue
        qw, back = orig[name].gptq_result, m.to_quantized_weight(); n += 1
        assert torch.equal(back.codes, qw.codes) and torch.equal(back.zeros, qw.zeros) and torch.equal(back.g_idx, qw.g_idx)
        assert torch.equal(back.dequantize(), fp16_scales(qw).dequantize())   # the quantizer's weight, fp16 scales
    assert n == 7
    with torch.no_grad(): diff = (loaded(IDS).logits - model(IDS).logits).abs().max().item()
    assert diff <= 1e-5, diff   # scales are fp16-exact here, so only matmul rounding remains


def tiny_gpt2():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=128, n_positions=64,
                                      bos_token_id=0, eos_token_id=0)).eval()


def tiny_opt():
    torch.manual_seed(0)
    return OPTForCausalLM(OPTConfig(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                                    vocab_size=128, max_position_embeddings=64, word_embed_proj_dim=64,
                                    bos_token_id=0, eos_token_id=0, pad_token_id=1)).eval()


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt"])
def test_arch_logits(tmp_path, arch):
    model = {"llama": lambda: tiny_llama(hidden=64, inter=128, layers=2), "gpt2": tiny_gpt2, "opt": tiny_opt}[arch]()
    rtn_quantize_model(model, QuantizeConfig(bits=4, group_size=32, sym=False, desc_act=False))
    with torch.no_grad(): ref = model(IDS).logits
    ck = save_quantized(model, tmp_path / arch, max_shard_size="30KB" if arch == "llama" else "4GB", dtype=torch.float32)
    assert (ck / "model.safetensors.index.json").exists() == (arch == "llama")
    with torch.no_grad():
        ours = from_quantized(ck, dtype=torch.float32)(IDS).logits
        hf = AutoModelForCausalLM.from_pretrained(ck, dtype=torch.float32)(IDS).logits
    print(f"{arch}: max|diff| reload {float((ours - ref).abs().max()):.2e}, transformers {float((hf - ref).abs().max()):.2e}")
    assert (ours - ref).abs().max() <= 1e-3 and (hf - ours).abs().max() <= 1e-5
    # default dtype (fp16) loads and runs on CPU too
    with torch.no_grad(): half = from_quantized(ck)(IDS).logits
    assert half.dtype == torch.float16 and (half.float() - ref).abs().max() < 0.05


def test_tokenizer_and_report_saved(tmp_path):
    from gptq_nb.data import tiny_tokenizer
    tok = tiny_tokenizer(["hello world, a tiny corpus for a tiny tokenizer"] * 20)
    model = rtn_quantize_model(tiny_llama(hidden=64, inter=128), QuantizeConfig(bits=4, group_size=32))

    class Report:
        def save(self, d): (d / "quant_report.json").write_text('{"rows": []}')
    ck = save_quantized(model, tmp_path / "ck", tokenizer=tok, report=Report())
    assert AutoTokenizer.from_pretrained(ck)("hello world").input_ids == tok("hello world").input_ids
    assert json.loads((ck / "quant_report.json").read_text()) == {"rows": []}


def test_real_quantize_output(tmp_path):
    "The lead's `quantize` (GPTQ, act-order) -> save_quantized -> from_quantized gives the in-memory logits."
    from gptq_nb.quantize import quantize
    model = tiny_llama(hidden=64, inter=128, layers=2)
    calib = [torch.randint(0, 128, (32,), generator=torch.Generator().manual_seed(i)).tolist() for i in range(4)]
    cfg = QuantizeConfig(bits=4, group_size=32, desc_act=True, sym=False)
    report = quantize(model, calib, cfg, device="cpu", progress=False)
    with torch.no_grad(): ref = model(IDS).logits
    ck = save_quantized(model, tmp_path / "ck", report=report, dtype=torch.float32)
    assert (ck / "quant_report" / "report.json").exists()
    from gptq_nb.quantize import QuantReport
    assert QuantReport.load(ck).table.loss.tolist() == report.table.loss.tolist()   # dashboards read it back
    with torch.no_grad(): out = from_quantized(ck, dtype=torch.float32)(IDS).logits
    assert (out - ref).abs().max() <= 1e-3


def test_gguf_loaded_config_is_replaced(tmp_path):
    "A GGUF-loaded model carries a gguf quantization_config: the checkpoint gets ours, the model keeps its own."
    model = rtn_quantize_model(tiny_llama(hidden=64, inter=128), QuantizeConfig(bits=4, group_size=32))
    model.config.quantization_config = {"quant_method": "gguf"}
    ck = save_quantized(model, tmp_path / "ck", dtype=torch.float32)
    assert json.loads((ck / "config.json").read_text())["quantization_config"]["quant_method"] == "gptq"
    assert model.config.quantization_config == {"quant_method": "gguf"}
    assert from_quantized(ck, dtype=torch.float32) is not None
