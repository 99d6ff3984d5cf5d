"""kernels/moe_block.py (the MoE block benchmark for the lent GPU) keeps working: its CPU mode runs on tiny shapes."""
import json, os, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_moe_block_benchmark_cpu_smoke(tmp_path):
    "Both shapes, tiny: quantize and the three decode variants run; unfusing is exact; the packed block equals its dequantized weights."
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "kernels" / "moe_block.py"), "--device", "cpu", "--tiny",
                        "--out", str(tmp_path)], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    d = json.load(open(tmp_path / "moe_block.json"))
    assert [x["shape"] for x in d["results"]] == ["mixtral", "qwen3"]
    for x in d["results"]:
        assert x["unfused_max_abs_diff"] == 0.0 and x["gptq_vs_dequantized_max_abs_diff"] < 1e-4, x
        assert x["coverage"] > 0.95 and x["median_expert_loss_ratio"] < 0.8 and x["expert_layers"] == 12, x
        assert x["merged_vs_unmerged_max_abs_diff"] < 1e-4 and x["merged_groups"] == (1 if x["shape"] == "mixtral" else 5), x
        assert x["quantize_s_per_block"] > 0 and x["fp16_fused_ms"] > 0 and x["gptq_ms"] > 0, x
