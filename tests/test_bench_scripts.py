"""The GPU benchmark scripts in kernels/ keep working: their CPU modes run here, so CI notices when the library moves
under them (the GPU runs themselves happen on the lent machine; kernels/RESULTS.md)."""
import json, os, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_decode_benchmark_cpu_smoke(tmp_path):
    "Protocol S3's harness on a tiny Llama, fp32 vs 4-bit QuantLinear (torch backend), unmerged and merged: runs, tokens agree."
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, str(ROOT / "kernels" / "decode.py"), "--device", "cpu", "--tiny",
                        "--out", str(tmp_path)], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    d = json.load(open(tmp_path / "s3_decode.json"))
    assert set(d["models"]) == {"fp32", "gptq-4bit-g128", "gptq-4bit-g128+merged"}, list(d["models"])
    assert d["merged_groups"] == 4   # q/k/v and gate/up in each of the tiny model's 2 blocks
    for name, harnesses in d["models"].items():
        for h in harnesses.values():
            assert h["logits_finite"] and h["tok_s"] > 0 and h.get("matches_eager", True) and h.get("runs_agree", True), (name, h)
    q, m = d["models"]["gptq-4bit-g128"], d["models"]["gptq-4bit-g128+merged"]
    assert [h["tokens"] for h in m.values()] == [h["tokens"] for h in q.values()]   # merging changes speed, not tokens


def test_gpu_only_scripts_import():
    "The sweeps that only run on the lent GPU at least import here: a renamed or moved library name breaks CI, not a GPU call."
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRITON_INTERPRET": "1"}
    mods = ("tc_sweep", "decode_sweep", "gemv_reduce", "pdl_check", "tile_read", "ncu_decode")
    r = subprocess.run([sys.executable, "-c", "; ".join(f"import kernels.{m}" for m in mods)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
