"""One MoE decoder block on the GPU: GPTQ quantize time per block, and decode latency per block at m=1 against fp16.

GPU, from the repo root:  PYTHONPATH=. python3 kernels/moe_block.py --out $OUT [--shapes mixtral qwen3]
CPU smoke test:           PYTHONPATH=. python3 kernels/moe_block.py --device cpu --tiny

Shapes (one decoder layer each, vocab 1000, random N(0, 0.02) matrices, unit norms, fp16, built on the device):
  mixtral: Mixtral-8x7B  (hidden 4096, 8 experts of intermediate 14336, top-2, 32 heads / 8 kv heads)
  qwen3:   Qwen3-30B-A3B (hidden 2048, 128 experts of intermediate 768, top-8, 32 heads / 4 kv heads, head_dim 128)
Quantize: `gptq_nb.quantize` at 4-bit g128 (sym, no act-order) on --nsamples random-token windows of --seqlen tokens,
one batch, on the GPU; the time is the report's own (capture + block + solves), one block.
Decode: the block alone on hidden states [1, 1, H] (m=1, no KV cache: attention over the one token), three variants:
  fp16-fused      transformers' experts module as shipped (its default experts implementation, recorded)
  fp16-unfused    gptq_nb's MoEExperts holding fp16 nn.Linear (the per-expert loop without the kernels)
  gptq-4bit-g128  the quantized block after pack_model: one QuantLinear (Triton on CUDA) launch per projection
                  of each active expert
  gptq+merged     the same after merge_projections: q/k/v one launch, and each expert's gate/up one launch where
                  they are named gate_proj/up_proj (Qwen3; Mixtral's w1/w3 stay two)
Eager (routing syncs with the host, so no CUDA graph), CUDA-event timing, median of --iters after warm-up.
--tiny: hidden 64, 4 experts, fp32, 4 windows of 32 tokens, 5 iterations; checks only that everything runs and the
quantized block matches its dequantized weights. Prints a table; writes --out/moe_block.json (default $OUT, else '.').
"""
import argparse, datetime, functools, json, os, statistics, subprocess, sys, time
import torch
import transformers
from gptq_nb.quant import QuantizeConfig
from gptq_nb.quantize import quantize
from gptq_nb.experts import MoEExperts, unfuse_experts
from gptq_nb.qlinear import pack_model, QuantLinear, resolve_backend, merge_projections

log = functools.partial(print, flush=True)

SHAPES = {
    "mixtral": lambda: transformers.MixtralConfig(hidden_size=4096, intermediate_size=14336, num_local_experts=8,
                                                  num_experts_per_tok=2, num_attention_heads=32, num_key_value_heads=8),
    "qwen3": lambda: transformers.Qwen3MoeConfig(hidden_size=2048, moe_intermediate_size=768, intermediate_size=6144,
                                                 num_experts=128, num_experts_per_tok=8, num_attention_heads=32,
                                                 num_key_value_heads=4, head_dim=128, norm_topk_prob=True),
}
TINY = {
    "mixtral": lambda: transformers.MixtralConfig(hidden_size=64, intermediate_size=128, num_local_experts=4,
                                                  num_experts_per_tok=2, num_attention_heads=4, num_key_value_heads=2),
    "qwen3": lambda: transformers.Qwen3MoeConfig(hidden_size=64, moe_intermediate_size=64, intermediate_size=128,
                                                 num_experts=4, num_experts_per_tok=2, num_attention_heads=4,
                                                 num_key_value_heads=2, head_dim=16),
}


@torch.no_grad()
def build(cfg, device, dtype, seed=0):
    "A one-layer model allocated and filled on `device` in `dtype`: N(0, 0.02) matrices, unit norms."
    cfg.num_hidden_layers, cfg.vocab_size, cfg.max_position_embeddings = 1, 1000, 4096
    cfg.tie_word_embeddings = False
    torch.manual_seed(seed)
    old = torch.get_default_dtype(); torch.set_default_dtype(dtype)
    try:
        with torch.device(device): model = transformers.AutoModelForCausalLM.from_config(cfg)
    finally: torch.set_default_dtype(old)
    for p in model.parameters():
        if p.ndim == 1: p.fill_(1.0)
        else: p.normal_(0.0, 0.02)
    return model.eval().requires_grad_(False)


def block_inputs(model, device, dtype):
    "Hidden states [1, 1, H] and the block's keyword arguments for one decode position."
    H = model.config.hidden_size
    x = torch.randn(1, 1, H, device=device, dtype=dtype) * 0.5
    pos = torch.zeros(1, 1, dtype=torch.long, device=device)
    return x, dict(position_embeddings=model.model.rotary_emb(x, pos), attention_mask=None, position_ids=pos)


def sync(device):
    if device.type == "cuda": torch.cuda.synchronize()


@torch.no_grad()
def time_block(block, x, kw, device, iters, warmup=5):
    "Median milliseconds of one block forward."
    for _ in range(warmup): block(x, **kw)
    sync(device); times = []
    for _ in range(iters):
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record(); block(x, **kw); b.record(); b.synchronize(); times.append(a.elapsed_time(b))
        else:
            t = time.perf_counter(); block(x, **kw); times.append(1e3 * (time.perf_counter() - t))
    return statistics.median(times)


def first(out): return out[0] if isinstance(out, (tuple, list)) else out


def run_shape(name, args, device, dtype):
    cfg = (TINY if args.tiny else SHAPES)[name]()
    res = dict(shape=name, config={k: getattr(cfg, k, None) for k in ("hidden_size", "intermediate_size", "moe_intermediate_size",
                                                                       "num_local_experts", "num_experts", "num_experts_per_tok")})
    model = build(cfg, device, dtype)
    res["experts_implementation"] = str(getattr(model.config, "_experts_implementation", None))
    block = model.model.layers[0]
    x, kw = block_inputs(model, device, dtype)
    res["fp16_fused_ms"] = time_block(block, x, kw, device, args.iters)
    ref = first(block(x, **kw)).float()
    # fp16 unfused: the per-expert loop alone
    unfuse_experts(block)
    res["fp16_unfused_ms"] = time_block(block, x, kw, device, args.iters)
    res["unfused_max_abs_diff"] = float((first(block(x, **kw)).float() - ref).abs().max())
    del model, block; torch.cuda.empty_cache() if device.type == "cuda" else None
    # quantize a fresh copy
    model = build(cfg, device, dtype)
    g = torch.Generator().manual_seed(1)
    cal = [{"input_ids": torch.randint(0, 1000, (args.seqlen,), generator=g)} for _ in range(args.nsamples)]
    sync(device); t = time.perf_counter()
    rep = quantize(model, cal, QuantizeConfig(bits=4, group_size=128 if not args.tiny else 32), device=device, progress=False)
    sync(device)
    res["quantize_s_per_block"] = time.perf_counter() - t
    t_ = rep.table; ex = t_[t_.expert.notna()]
    res.update(layers=len(t_), expert_layers=len(ex), coverage=rep.summary["coverage"],
               median_expert_loss_ratio=float(ex.loss_ratio.median()), solve_s=float(t_.seconds.sum()),
               fallbacks=int((ex.fallback != "").sum()), kept_full_precision=len(rep.summary.get("kept_full_precision", {})))
    block = model.model.layers[0]
    with torch.no_grad(): deq = first(block(x, **kw)).float()
    pack_model(model)
    ql = next(m for m in block.modules() if isinstance(m, QuantLinear))
    res["backend"] = resolve_backend(ql, x.reshape(1, -1))
    res["gptq_ms"] = time_block(block, x, kw, device, args.iters)
    res["gptq_vs_dequantized_max_abs_diff"] = float((first(block(x, **kw)).float() - deq).abs().max())
    y = first(block(x, **kw)).float()
    res["merged_groups"] = merge_projections(model)   # q/k/v, and each expert's gate/up where named gate_proj/up_proj
    res["gptq_merged_ms"] = time_block(block, x, kw, device, args.iters)
    res["merged_vs_unmerged_max_abs_diff"] = float((first(block(x, **kw)).float() - y).abs().max())
    res["speedup_vs_fp16_fused"] = res["fp16_fused_ms"] / res["gptq_ms"]
    res["speedup_vs_fp16_unfused"] = res["fp16_unfused_ms"] / res["gptq_ms"]
    del model, block
    if device.type == "cuda": torch.cuda.empty_cache()
    return res


def meta(device):
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), commit=commit or None,
                device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu", torch=torch.__version__,
                transformers=transformers.__version__)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--nsamples", type=int); ap.add_argument("--seqlen", type=int); ap.add_argument("--iters", type=int)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    device = torch.device(args.device)
    dtype = torch.float32 if args.tiny else torch.float16
    args.nsamples = args.nsamples or (4 if args.tiny else 128)
    args.seqlen = args.seqlen or (32 if args.tiny else 512)
    args.iters = args.iters or (5 if args.tiny else 50)
    out = dict(meta=meta(device), args=vars(args), results=[])
    for name in args.shapes:
        log(f"== {name}")
        try: out["results"].append(run_shape(name, args, device, dtype))
        except Exception as e:  # record and go on to the next shape
            import traceback; out["results"].append(dict(shape=name, error=repr(e), trace=traceback.format_exc()[-3000:]))
        log(json.dumps(out["results"][-1], default=str))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "moe_block.json"), "w") as f: json.dump(out, f, indent=1, default=str)
    log(f"\n{'shape':10} {'quant s/blk':>11} {'fp16 ms':>8} {'fp16 loop':>9} {'gptq ms':>8} {'merged':>7} {'x fused':>7} {'ratio':>6}")
    for r in out["results"]:
        if "error" in r: log(f"{r['shape']:10} ERROR {r['error'][:80]}"); continue
        log(f"{r['shape']:10} {r['quantize_s_per_block']:11.1f} {r['fp16_fused_ms']:8.3f} {r['fp16_unfused_ms']:9.3f} "
            f"{r['gptq_ms']:8.3f} {r['gptq_merged_ms']:7.3f} {r['speedup_vs_fp16_fused']:7.2f} {r['median_expert_loss_ratio']:6.3f}")
    return 1 if any("error" in r for r in out["results"]) else 0


if __name__ == "__main__":
    sys.exit(main())
