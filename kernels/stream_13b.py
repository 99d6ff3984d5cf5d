"""Issue 14, GPU check: quantize a Llama-2-13B-shaped checkpoint from its files on disk within a 24 GB GPU budget.

    PYTHONPATH=. python3 kernels/stream_13b.py --out $OUT                  # on the GPU (writes ~26 GB under --dir)
    PYTHONPATH=. python3 kernels/stream_13b.py --tiny --device cpu         # anywhere: the same steps, tiny shapes

1. Writes a random-weight fp16 checkpoint of the Llama-2-13B config (hidden 5120, intermediate 13824, 40 layers,
   40 heads, vocabulary 32000; N(0, 0.02) weights, unit norms) as sharded safetensors under --dir, with the
   tensors generated on the device and written one at a time (this step's memory is not measured).
2. In a fresh process: `quantize(folder, calibration, QuantizeConfig(bits=4, group_size=128, desc_act=False),
   save_dir=..., max_gpu_memory="24GB")`; calibration = 128 windows of 2048 *random* tokens (synthetic, the
   shape of protocol S2; speed and memory don't depend on the values). Reports wall time, host peak RSS
   (`ru_maxrss`), GPU peak (`max_memory_allocated`, and `max_memory_reserved`), the planned chunk size, per-block
   seconds; writes stream_13b.json under --out.
"""
import argparse, json, os, resource, subprocess, sys, time
from pathlib import Path

SHAPES = dict(hidden=5120, inter=13824, layers=40, heads=40, vocab=32000, windows=128, seqlen=2048)
TINY = dict(hidden=64, inter=128, layers=3, heads=4, vocab=256, windows=8, seqlen=64)


def log(*a): print(*a, flush=True)


def write_checkpoint(d: Path, s: dict, device: str):
    import torch, transformers as tf
    from gptq_nb.stream import write_safetensors
    cfg = tf.LlamaConfig(hidden_size=s["hidden"], intermediate_size=s["inter"], num_hidden_layers=s["layers"],
                         num_attention_heads=s["heads"], num_key_value_heads=s["heads"], vocab_size=s["vocab"],
                         max_position_embeddings=4096, dtype="float16", architectures=["LlamaForCausalLM"])
    d.mkdir(parents=True, exist_ok=True); cfg.save_pretrained(d)
    g = torch.Generator(device=device).manual_seed(0)
    rnd = lambda *shape: (torch.randn(*shape, generator=g, device=device, dtype=torch.float16) * 0.02)
    H, I = s["hidden"], s["inter"]
    shards, wmap = [], {}
    def shard(tensors):
        name = f"model-{len(shards) + 1:05d}.safetensors"
        write_safetensors(d / name, tensors, {"format": "pt"}); shards.append(name)
        wmap.update({k: name for k in tensors})
    shard({"model.embed_tokens.weight": rnd(s["vocab"], H), "model.norm.weight": torch.ones(H, dtype=torch.float16),
           "lm_head.weight": rnd(s["vocab"], H)})
    for i in range(0, s["layers"], 2):   # two blocks per shard (~1.3 GB at 13B)
        t = {}
        for b in (i, i + 1):
            if b >= s["layers"]: break
            p = f"model.layers.{b}."
            for n in ("q_proj", "k_proj", "v_proj", "o_proj"): t[p + f"self_attn.{n}.weight"] = rnd(H, H)
            t[p + "mlp.gate_proj.weight"] = rnd(I, H); t[p + "mlp.up_proj.weight"] = rnd(I, H); t[p + "mlp.down_proj.weight"] = rnd(H, I)
            t[p + "input_layernorm.weight"] = torch.ones(H, dtype=torch.float16)
            t[p + "post_attention_layernorm.weight"] = torch.ones(H, dtype=torch.float16)
        shard(t)
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wmap}))
    return sum(f.stat().st_size for f in d.glob("*.safetensors"))


def quantize_child(d: Path, save: Path, s: dict, device: str, budget: str, res: Path):
    import torch
    from gptq_nb.quant import QuantizeConfig
    from gptq_nb.quantize import quantize
    g = torch.Generator().manual_seed(0)
    cal = [{"input_ids": torch.randint(0, s["vocab"], (s["seqlen"],), generator=g)} for _ in range(s["windows"])]
    cuda = device == "cuda"
    if cuda: torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    rep = quantize(str(d), cal, QuantizeConfig(bits=4, group_size=128, desc_act=False), device=device,
                   max_gpu_memory=budget if cuda else None, save_dir=save, progress=True)
    wall = time.perf_counter() - t0
    out = dict(wall_s=wall, host_peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
               gpu_peak_alloc_gib=torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
               gpu_peak_reserved_gib=torch.cuda.max_memory_reserved() / 2**30 if cuda else None,
               batch_size=rep.summary.get("batch_size"), layers=len(rep.rows),
               block_seconds=rep.summary.get("block_seconds"),
               checkpoint_bytes=sum(f.stat().st_size for f in save.glob("*.safetensors")),
               budget=budget, device=torch.cuda.get_device_name() if cuda else "cpu")
    res.write_text(json.dumps(out, indent=1))
    log(json.dumps({k: v for k, v in out.items() if k != "block_seconds"}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="."); ap.add_argument("--dir", default="/tmp/s14"); ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--device", default="cuda"); ap.add_argument("--budget", default="24GB")
    ap.add_argument("--time-limit", type=float, default=420); ap.add_argument("--child", action="store_true")
    a = ap.parse_args()
    s = TINY if a.tiny else SHAPES
    d, save, out = Path(a.dir) / "src", Path(a.dir) / "gptq", Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.child: return quantize_child(d, save, s, a.device, a.budget, out / "stream_13b.json")
    t_start = time.perf_counter()
    t0 = time.perf_counter(); size = write_checkpoint(d, s, a.device); t_write = time.perf_counter() - t0
    log(f"checkpoint written: {size / 1e9:.2f} GB in {t_write:.1f} s under {d}")
    left = a.time_limit - (time.perf_counter() - t_start)
    cmd = [sys.executable, __file__, "--child", "--out", str(out), "--dir", a.dir, "--device", a.device, "--budget", a.budget] + (["--tiny"] if a.tiny else [])
    try:
        r = subprocess.run(cmd, timeout=max(left, 10)); rc = r.returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    res = json.loads((out / "stream_13b.json").read_text()) if (out / "stream_13b.json").exists() else {}
    work = Path(a.dir) / ".gptq.gptq-work" / "state.json"
    if work.exists(): res["blocks_done_at_end"] = json.loads(work.read_text())["done"]
    res.update(child_rc=rc, checkpoint_gb=size / 1e9, write_s=t_write, shapes=s)
    (out / "stream_13b.json").write_text(json.dumps(res, indent=1))
    log(json.dumps({k: v for k, v in res.items() if k != "block_seconds"}))


if __name__ == "__main__":
    main()
