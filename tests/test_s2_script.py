"""Protocol S2's script (kernels/s2.py) keeps working: its tiny CPU mode runs the same code paths as the GPU run
(solver comparison on one block's linears, quantize + pack of a random Llama, phase timers)."""
import json, os, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_s2_tiny_cpu(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}   # the torch column loop: seconds, not minutes
    env["PYTHONPATH"] = str(ROOT)
    r = subprocess.run([sys.executable, str(ROOT / "kernels" / "s2.py"), "--tiny", "--device", "cpu", "--out", str(tmp_path)],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    d = json.load(open(tmp_path / "s2.json"))
    layers = d["solver"]["layers"]
    assert len(layers) == 7 and all(l["torch_loop_rel"] <= 1e-3 for l in layers.values()), layers
    plain, inst = d["s2"]
    assert plain["layers"] == inst["layers"] == 14 and plain["mean_loss_ratio"] < 1
    assert {"capture", "hessians", "solves", "block_copies", "packing", "forwards_and_rest"} <= set(inst["phases_s"])
