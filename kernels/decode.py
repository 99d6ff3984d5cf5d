"""Protocol S3 (PROTOCOL.md), end-to-end decode: float vs GPTQ 4-bit g128 on a Llama-2-7B-shaped model, one GPU.

GPU, from the repo root:  PYTHONPATH=. python3 kernels/decode.py --out $OUT [--compile]
CPU smoke test:           PYTHONPATH=. python3 kernels/decode.py --device cpu --tiny [--compile]

Model: `LlamaForCausalLM` from the Llama-2-7B config (hidden 4096, intermediate 11008, 32 layers, 32 heads, vocab
32000), random N(0, 0.02) weights, allocated and filled on the GPU in fp16. Timed as is, then converted in place:
every nn.Linear of the decoder layers becomes a `QuantLinear` (backend 'auto': Triton on CUDA) holding random 4-bit
g128 packed tensors from `random_gptq` (one set per role q/k/v/o/gate/up/down, scales rescaled to weight std 0.02,
format gptq_v2: see `random_quantlinear`); lm_head and embeddings stay fp16. Batch 1, 128-token random prompt, greedy.
Third model (unless --no-merge): the same quantized model after `merge_projections` (q/k/v and gate/up each one
launch; the fp16 model keeps transformers' separate layers, as a user would run it).

Harness, identical for both: transformers' StaticCache; prefill = one forward over the prompt, then 128 decode steps.
A step is all on-device (reads static `ids`/`pos`, argmaxes, stores the token, advances `ids`/`pos` in place), so on
CUDA one step is captured in a `torch.cuda.CUDAGraph` after eager warm-up on a side stream, and decoding is 128
`replay()` calls with no host sync. CUDA-event timing; tokens/s = 128 / decode s; median of 3 runs after 1 untimed.
Capture check: replayed tokens must equal the same step run eagerly (prefill token + 16 steps).
--compile: also time the step under `torch.compile(mode=--compile-mode)` in the same graph harness, to learn whether
QuantLinear compiles (graph breaks are counted); failures are recorded, never fatal.
--tiny: 2 layers, hidden 128, vocab 1000, float32, 16-token prompt, 8 new tokens; eager loop on CPU.
Prints a table last; everything goes to --out/s3_decode.json (default $OUT, else '.').
"""
import argparse, datetime, functools, inspect, json, os, statistics, subprocess, sys, time, traceback
import torch
from torch import nn
import transformers
from transformers import LlamaConfig, LlamaForCausalLM, StaticCache
import gptq_nb.kernels.gemm as gemm   # registers the 'triton' QuantLinear backend when triton imports
from gptq_nb.qlinear import QuantLinear, dequantize_weight, resolve_backend, merge_projections

log = functools.partial(print, flush=True)


def make_config(tiny):
    shape = (dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4, vocab_size=1000, max_position_embeddings=256) if tiny else
             dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                  num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096))
    return LlamaConfig(**shape, rms_norm_eps=1e-5, tie_word_embeddings=False, attn_implementation="sdpa")


@torch.no_grad()
def build_model(cfg, device, dtype, seed=0):
    "The model allocated and filled on `device` in `dtype` (never on the host): N(0, 0.02) matrices, unit norms."
    torch.manual_seed(seed)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device): model = LlamaForCausalLM(cfg)
    finally: torch.set_default_dtype(old)
    for p in model.parameters():
        if p.ndim == 1: p.fill_(1.0)            # RMSNorm gains
        else: p.normal_(0.0, 0.02)
    return model.eval().requires_grad_(False)


def random_quantlinear(K, N, device, dtype, seed, std=0.02):
    """A QuantLinear holding `random_gptq`'s packed 4-bit g128 tensors, scales rescaled so the weight's std is `std`.
    Format gptq_v2 (same kernel, zero offset 0 instead of 1): random v1 zeros lie in 1..15, mean 8 vs the codes' 7.5,
    a -0.5*scale bias on every weight that at 7B width drives the residual stream to ~5e4 (fp16 max 65504)."""
    r = gemm.random_gptq(K, N, bits=4, group_size=128, device=device, seed=seed, checkpoint_format="gptq_v2")
    q = QuantLinear(K, N, 4, 128, False, r["checkpoint_format"], False, "auto", device=device, dtype=dtype)
    for k in ("qweight", "qzeros", "scales", "g_idx"): getattr(q, k).copy_(r[k])
    q.scales.mul_(std / dequantize_weight(q).std().item())   # raw random_gptq weights (std ~0.08) overflow fp16 at 7B
    return q


@torch.no_grad()
def quantize_in_place(model, device, dtype):
    """Swap every nn.Linear of the decoder layers for a QuantLinear; frees the float weights. One random pack per role
    (q, k, v, o, gate, up, down), shared by all layers: identical packs for q and k would make attention degenerate."""
    packs, n = {}, 0
    for layer in model.model.layers:
        for name, mod in [(n_, m) for n_, m in layer.named_modules() if isinstance(m, nn.Linear)]:
            K, N = mod.in_features, mod.out_features
            if name not in packs: packs[name] = random_quantlinear(K, N, device, dtype, seed=len(packs))
            t = packs[name]
            q = QuantLinear(K, N, t.bits, t.group_size, mod.bias is not None, t.checkpoint_format, t.sym, "auto",
                            device=device, dtype=dtype)
            for k in ("qweight", "qzeros", "scales", "g_idx"): getattr(q, k).copy_(getattr(t, k))
            if mod.bias is not None: q.bias.copy_(mod.bias)
            parent, _, child = name.rpartition(".")
            setattr(layer.get_submodule(parent) if parent else layer, child, q)
            n += 1
    del packs, mod
    if torch.device(device).type == "cuda": torch.cuda.empty_cache()
    return n


class Decoder:
    "Greedy batch-1 generation over a StaticCache; `step()` is one on-device decode step (capturable)."
    def __init__(self, model, prompt_len, new_tokens, compile_mode=None):
        self.model, self.P, self.n = model, prompt_len, new_tokens
        dev = next(model.parameters()).device
        self.cuda = dev.type == "cuda"
        params = inspect.signature(model.forward).parameters   # transformers >= 5.2x renames past_key_values -> cache
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        self.cache = StaticCache(config=model.config, max_cache_len=prompt_len + new_tokens + 1)
        self.ids = torch.zeros(1, 1, dtype=torch.long, device=dev)
        self.pos = torch.zeros(1, 1, dtype=torch.long, device=dev)
        self.out = torch.zeros(new_tokens + 1, dtype=torch.long, device=dev)   # out[0]: the prefill's token
        for t in (self.ids, self.pos, self.out): torch._dynamo.mark_static_address(t)   # mutated in place by step()
        self.step = torch.compile(self._step, mode=compile_mode) if compile_mode else self._step
        self.graph = None

    def _logits(self, ids, pos):
        return self.model(input_ids=ids, position_ids=pos, use_cache=True, **{self.cache_kw: self.cache}).logits[:, -1]

    def _step(self):
        nxt = self._logits(self.ids, self.pos).argmax(-1)                   # [1], stays on the device
        self.out.index_copy_(0, self.pos.view(1) - (self.P - 1), nxt)
        self.ids.copy_(nxt.view(1, 1))
        self.pos.add_(1)

    @torch.no_grad()
    def prefill(self, prompt):
        logits = self._logits(prompt, torch.arange(self.P, device=prompt.device).view(1, -1))
        t0 = logits.argmax(-1)
        self.out.zero_(); self.out[:1].copy_(t0); self.ids.copy_(t0.view(1, 1)); self.pos.fill_(self.P)
        return logits

    @torch.no_grad()
    def capture(self, prompt, warmup=3):
        self.cache.reset(); self.prefill(prompt)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(warmup): self.step()           # triton JIT, prepare() caches, torch.compile all happen here
        torch.cuda.current_stream().wait_stream(s)
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g): self.step()
        torch.cuda.synchronize()
        self.graph = g

    @torch.no_grad()
    def generate(self, prompt, steps=None, eager=False):
        "One generation: dict(prefill_ms, decode_s, tokens); eager=True runs the uncompiled step without the graph."
        steps = self.n if steps is None else steps
        step = self._step if eager else self.graph.replay if self.graph is not None else self.step
        self.cache.reset()
        t0 = self._mark(); self.prefill(prompt); t1 = self._mark()
        for _ in range(steps): step()
        t2 = self._mark()
        return dict(prefill_ms=self._secs(t0, t1) * 1e3, decode_s=self._secs(t1, t2), tokens=self.out[:steps + 1].tolist())

    def _mark(self):
        "A time stamp: a CUDA event on the current stream (no host sync), else perf_counter."
        if not self.cuda: return time.perf_counter()
        e = torch.cuda.Event(enable_timing=True); e.record(); return e

    def _secs(self, a, b):
        if not self.cuda: return b - a
        b.synchronize(); return a.elapsed_time(b) / 1e3


def bench(model, prompt, args, compile_mode=None):
    "Reference eager run, optional compile + CUDA-graph capture, then 1 untimed + `runs` timed generations."
    P, n, check = prompt.shape[1], args.new_tokens, min(16, args.new_tokens)
    res = dict(harness="static_cache" + (f"+compile({compile_mode})" if compile_mode else ""))
    if prompt.is_cuda: torch.cuda.reset_peak_memory_stats()
    dec = Decoder(model, P, n, compile_mode)
    ref = dec.generate(prompt, steps=check, eager=True)            # also warms triton kernels / caches
    dec.cache.reset()
    res["logits_finite"] = bool(torch.isfinite(dec.prefill(prompt)).all())
    counters = torch._dynamo.utils.counters
    counters.clear()
    def count_graphs():
        if compile_mode: res.update(graph_breaks=sum(counters["graph_break"].values()), unique_graphs=counters["stats"]["unique_graphs"],
                                    graph_break_reasons=[str(k)[:300] for k in list(counters["graph_break"])[:10]])
    try:
        if dec.cuda and not args.no_graph and compile_mode != "reduce-overhead":   # that mode brings its own graphs
            dec.capture(prompt)
            res["harness"] += "+cuda_graph"
        elif compile_mode:
            dec.generate(prompt, steps=2)                           # compile outside the timed runs
        res["compiled"] = bool(compile_mode)
    except Exception as e:
        res.update(compiled=False, error=f"{type(e).__name__}: {e}"[:2000])
        log(f"  !! {res['harness']} failed: {res['error'][:500]}")
        traceback.print_exc()
        if isinstance(e, torch.cuda.OutOfMemoryError): raise
        count_graphs()
        return res
    dec.generate(prompt)                                            # untimed
    runs = [dec.generate(prompt) for _ in range(args.runs)]
    count_graphs()
    res["runs"] = [dict(prefill_ms=r["prefill_ms"], decode_s=r["decode_s"], tok_s=n / r["decode_s"]) for r in runs]
    res["prefill_ms"] = statistics.median(r["prefill_ms"] for r in runs)
    res["tok_s"] = statistics.median(n / r["decode_s"] for r in runs)
    toks = runs[-1]["tokens"]
    res.update(ms_per_token=1e3 / res["tok_s"], tokens=toks, tokens_eager=ref["tokens"],
               matches_eager=toks[:check + 1] == ref["tokens"],            # compiled kernels may round differently
               first_mismatch=next((i for i, (a, b) in enumerate(zip(toks, ref["tokens"])) if a != b), None),
               runs_agree=all(r["tokens"] == runs[0]["tokens"] for r in runs))
    if dec.cuda: res["max_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    log(f"  {res['harness']}: prefill {res['prefill_ms']:.1f} ms, decode {res['tok_s']:.1f} tok/s, "
        f"graph/compiled tokens == eager: {res['matches_eager']}")
    del dec
    if prompt.is_cuda: torch.cuda.empty_cache()
    return res


def meta(args, device):
    m = dict(protocol="S3", date=datetime.datetime.now().isoformat(timespec="seconds"), argv=sys.argv,
             torch=torch.__version__, transformers=transformers.__version__, python=sys.version.split()[0],
             triton=getattr(gemm.triton, "__version__", None), device=str(device))
    try: m["commit"] = os.environ.get("COMMIT") or subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True,
                                                                   text=True).stdout.strip()
    except Exception: pass
    if device.type == "cuda": m["card"] = torch.cuda.get_device_name(device)
    return m


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny Llama, float32, 16-token prompt, 8 new tokens")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--prompt-len", type=int)
    ap.add_argument("--new-tokens", type=int)
    ap.add_argument("--no-graph", action="store_true", help="eager decode loop even on CUDA")
    ap.add_argument("--compile", action="store_true", help="also time the torch.compile'd step")
    ap.add_argument("--compile-mode", default="max-autotune-no-cudagraphs")
    ap.add_argument("--no-merge", action="store_true", help="skip the third model (q/k/v and gate/up merged)")
    args = ap.parse_args()
    args.prompt_len = args.prompt_len or (16 if args.tiny else 128)
    args.new_tokens = args.new_tokens or (8 if args.tiny else 128)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available(): sys.exit("no CUDA device: use --device cpu --tiny")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "s3_decode.json")
    result = dict(meta=meta(args, device), prompt_len=args.prompt_len, new_tokens=args.new_tokens, runs=args.runs,
                  dtype=str(dtype).replace("torch.", ""), models={})
    save = lambda: json.dump(result, open(path, "w"), indent=1)
    harnesses = [None] + ([args.compile_mode] if args.compile else [])
    t0 = time.time()
    try:
        cfg = make_config(args.tiny)
        result["config"] = {k: getattr(cfg, k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                          "num_attention_heads", "vocab_size", "max_position_embeddings")}
        g = torch.Generator().manual_seed(0)
        prompt = torch.randint(0, cfg.vocab_size, (1, args.prompt_len), generator=g).to(device)
        model = build_model(cfg, device, dtype)
        result["meta"]["attn_implementation"] = model.config._attn_implementation
        fl = "fp16" if dtype == torch.float16 else "fp32"
        log(f"built {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params ({fl}) on {device} in {time.time() - t0:.1f} s")
        labels = (fl, "gptq-4bit-g128") + (() if args.no_merge else ("gptq-4bit-g128+merged",))
        for label in labels:
            if label.endswith("+merged"):
                result["merged_groups"] = merge_projections(model)
                log(f"merged {result['merged_groups']} q/k/v and gate/up groups into one launch each")
            elif label != fl:
                t1 = time.time()
                nq = quantize_in_place(model, device, dtype)
                q = next(m for m in model.modules() if isinstance(m, QuantLinear))
                backend = resolve_backend(q, torch.zeros(1, q.in_features, device=device, dtype=dtype))
                result["quant"] = dict(layers=nq, backend=backend, bits=4, group_size=128, format=q.checkpoint_format,
                                       build_s=time.time() - t1)
                log(f"quantized {nq} linears (backend {backend!r}) in {time.time() - t1:.1f} s")
            log(f"== {label}")
            result["models"][label] = {}
            for cm in harnesses:
                r = bench(model, prompt, args, cm)
                result["models"][label][r["harness"]] = r
                if cm: torch._dynamo.reset()
                save()
    except torch.cuda.OutOfMemoryError as e:
        result["error"] = f"OOM: {e}"[:2000]
        log(f"!! out of GPU memory: {e}\n{torch.cuda.memory_summary(abbreviated=True)}")
    except Exception as e:
        result["error"] = traceback.format_exc()[-4000:]
        log(f"!! failed: {type(e).__name__}: {e}"); traceback.print_exc()
    result["wall_s"] = time.time() - t0
    save()
    # ---- table
    log(f"\nS3 decode, {result['meta'].get('card', device)}, prompt {args.prompt_len} + {args.new_tokens} new, "
        f"median of {args.runs}; wrote {path}")
    log(f"{'model':15} {'harness':58} {'prefill ms':>10} {'tok/s':>8} {'ratio':>6}  ==eager")
    base = next(iter(result["models"].values()), {})
    for label, hs in result["models"].items():
        for h, r in hs.items():
            if "tok_s" not in r: log(f"{label:15} {h:58} FAILED: {r.get('error', '')[:70]}"); continue
            ratio = f"{r['tok_s'] / base[h]['tok_s']:6.2f}" if "tok_s" in base.get(h, {}) else "     -"
            log(f"{label:15} {h:58} {r['prefill_ms']:10.1f} {r['tok_s']:8.1f} {ratio}  {r['matches_eager']}")
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
