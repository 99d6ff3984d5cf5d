"""Protocol S3 through `model.generate` as a user calls it: fp16 on its fastest transformers path against gptq_nb's default.

GPU, from the repo root:  PYTHONPATH=. python3 kernels/s3_generate.py --model llama2-7b --out $OUT
                          PYTHONPATH=. python3 kernels/s3_generate.py --model llama3-8b --out $OUT
CPU smoke test:           PYTHONPATH=. python3 kernels/s3_generate.py --model tiny --device cpu

Models: `LlamaForCausalLM` from the Llama-2-7B config (MHA, vocab 32000) or the Llama-3-8B config (GQA 32/8 heads,
intermediate 14336, vocab 128256, rope theta 5e5), random N(0, 0.02) fp16 weights built on the GPU
(`decode.build_model`). fp16 runs `generate(..., cache_implementation="static")`: transformers' static cache with its
auto-compiled decode step (`CompileConfig()` defaults: inductor, mode "reduce-overhead" = CUDA graphs). Then the same
model is quantized in place (`decode.quantize_in_place`: every decoder linear a 4-bit g128 QuantLinear of random packed
codes, Triton backend; lm_head and embeddings fp16), given gptq_nb's set-up (`install_generate`, what `from_quantized`
and the transformers loader do) and called with plain `generate(...)`: bucketed static cache, compiled step, q/k/v and
gate/up merged at the first call.

Per batch size (1, 8, 32): 128-token random prompt, 128 new tokens (`min_new_tokens` = max), greedy; first call timed
alone (its excess over a steady call is the set-up: compile + capture + merge), 1 more warm-up, best of 3. tokens/s =
batch x 128 / seconds of the whole `generate` call. Time to first token: a 2048-token prompt, `max_new_tokens=1`, best
of 3 after 1. Peak GPU memory: `max_memory_allocated` over the model's timed (steady) runs, `peak_mem_gib`, and
separately over its first calls (set-up included: merge, compile, capture, cache), `peak_mem_first_call(s)_gib`. Greedy check: the quantized model's first
32 tokens against the same model with the set-up switched off (`gptq_nb_generate.enabled = False`: transformers'
eager dynamic-cache path, unmerged kernels' numerics aside), batch 1 and 8. Optional last: the quantized model with a
4-bit lm_head too (--lm-head); --ab-pdl: a second quantized model without PDL in its decode step; --ab-ordered: a second quantized model with the ordered split-K sums. --fp16-loop adds the fp16 model through gptq_nb's decode loop (what fp16 would gain from
the same loop). The loop's CUDA-graph replay is checked against the same loop run eagerly (identical tokens expected). Everything goes to --out/s3_generate_<model>.json, rewritten after each phase.
"""
import argparse, datetime, functools, json, os, subprocess, sys, time, traceback
import torch
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import transformers
from transformers import LlamaConfig
import decode   # build_model, quantize_in_place, random_quantlinear (kernels/decode.py)
from gptq_nb.generate import install_generate
from gptq_nb.qlinear import QuantLinear, resolve_backend

log = functools.partial(print, flush=True)
SHAPES = {
    "llama2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096),
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0),
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1000, max_position_embeddings=4096),
}


def sync(dev):
    if dev.type == "cuda": torch.cuda.synchronize()


def timed(model, kw):
    dev = model.device; sync(dev); t0 = time.perf_counter()
    out = model.generate(**kw)
    sync(dev); return time.perf_counter() - t0, out


def graphs():
    c = torch._dynamo.utils.counters
    return dict(unique_graphs=c["stats"]["unique_graphs"], graph_breaks=sum(c["graph_break"].values()))


def gen_kwargs(prompt, n, extra):
    return dict(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, min_new_tokens=n,
                do_sample=False, pad_token_id=0, **extra)


def model_bytes(model):
    return sum(t.numel() * t.element_size() for t in {t.data_ptr(): t for t in list(model.parameters()) + list(model.buffers())}.values())


class Runner:
    "The models side by side, one phase at a time (batch 1 for both, then TTFT, then larger batches), saving after each."
    def __init__(self, args, result, save):
        self.args, self.result, self.save, self.g = args, result, save, torch.Generator().manual_seed(0)
        self.prompts = {}

    def prompt(self, B, L, V, dev):
        if (B, L) not in self.prompts: self.prompts[(B, L)] = torch.randint(0, V, (B, L), generator=self.g)
        return self.prompts[(B, L)].to(dev)

    def peak_start(self, model):
        if model.device.type != "cuda": return None
        torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() - model_bytes(model)   # what the other models hold

    def peak_end(self, model, other):
        if other is None: return None
        return (torch.cuda.max_memory_allocated() - other) / 2**30   # this model's weights + cache + activations

    def over(self): return time.time() - T0 > self.args.time_limit

    def batch(self, label, model, extra, B):
        res = self.result["models"].setdefault(label, {})
        if self.over(): res[f"b{B}"] = "skipped: time limit"; self.save(); return
        args = self.args
        kw = gen_kwargs(self.prompt(B, args.prompt_len, model.config.vocab_size, model.device), args.new_tokens, extra)
        other = self.peak_start(model)
        try:
            t_first, out = timed(model, kw)
            for _ in range(args.warmup - 1): timed(model, kw)
            first_peak = self.peak_end(model, other)
            if other is not None: torch.cuda.reset_peak_memory_stats()   # the steady calls' own peak, set-up excluded
            before = graphs()
            ts = [timed(model, kw)[0] for _ in range(args.runs)]
            after = graphs()
            best = min(ts)
            r = dict(first_call_s=t_first, best_s=best, runs_s=ts, setup_s=t_first - best,
                     tok_s=B * args.new_tokens / best, tok_s_per_seq=args.new_tokens / best,
                     recompiled_in_timed_runs=after["unique_graphs"] != before["unique_graphs"], **after,
                     tokens=out[:, args.prompt_len:].tolist() if B <= 8 else None)
            if B == 1:   # a different max_new_tokens in the same cache bucket: no recompile, no new cache
                t, _ = timed(model, gen_kwargs(kw["input_ids"], args.new_tokens - 28, extra)); a2 = graphs()
                r.update(other_max_new_tokens_s=t, recompiled_for_other_max_new_tokens=a2["unique_graphs"] != after["unique_graphs"])
            r["peak_mem_gib"], r["peak_mem_first_calls_gib"] = self.peak_end(model, other), first_peak
            res[f"b{B}"] = r
            log(f"  {label} batch {B}: {r['tok_s']:.1f} tok/s ({r['tok_s_per_seq']:.1f}/seq), first call {t_first:.1f} s "
                f"(set-up {r['setup_s']:.1f} s), peak {r['peak_mem_gib']} GiB, graphs {after}, t={time.time() - T0:.0f} s")
        except Exception as e:
            res[f"b{B}"] = dict(error=traceback.format_exc()[-3000:]); log(f"  !! {label} batch {B}: {type(e).__name__}: {e}")
            if isinstance(e, torch.cuda.OutOfMemoryError): torch.cuda.empty_cache()
        self.save()

    def ttft(self, label, model, extra):
        res = self.result["models"].setdefault(label, {})
        if self.over() or not self.args.ttft_len: return
        other = self.peak_start(model)
        try:
            kw = gen_kwargs(self.prompt(1, self.args.ttft_len, model.config.vocab_size, model.device), 1, extra)
            timed(model, kw)
            first_peak = self.peak_end(model, other)
            if other is not None: torch.cuda.reset_peak_memory_stats()
            ts = [timed(model, kw)[0] for _ in range(self.args.runs)]
            res["ttft"] = dict(prompt_len=self.args.ttft_len, best_s=min(ts), runs_s=ts, peak_mem_gib=self.peak_end(model, other),
                               peak_mem_first_call_gib=first_peak)
            log(f"  {label} TTFT ({self.args.ttft_len} tokens): {min(ts) * 1e3:.1f} ms")
        except Exception as e:
            res["ttft"] = dict(error=traceback.format_exc()[-3000:]); log(f"  !! {label} TTFT: {e}")
        self.save()

    def graph_check(self, label, model, st, B):
        "The loop's CUDA-graph replay against the same loop run eagerly (same kernels): tokens must be identical."
        res = self.result["models"][label]
        fast = res.get(f"b{B}", {}).get("tokens") if isinstance(res.get(f"b{B}"), dict) else None
        if fast is None or self.over() or not st.calls or not st.calls[-1].get("loop"): return
        args = self.args
        kw = gen_kwargs(self.prompt(B, args.prompt_len, model.config.vocab_size, model.device), args.new_tokens, {})
        st.graphs, st.step = False, None
        try: refs = [timed(model, kw)[1][:, args.prompt_len:].tolist() for _ in range(2)]
        finally: st.graphs, st.step = None, None
        again = timed(model, kw)[1][:, args.prompt_len:].tolist()
        res.setdefault("graph_vs_eager_step", {})[f"b{B}"] = dict(all_equal=refs[0] == fast, eager_twice_equal=refs[0] == refs[1],
                                                                  graph_twice_equal=again == fast)
        log(f"  {label} loop with CUDA graph vs same loop eager, batch {B}: tokens equal {refs[0] == fast}; "
            f"eager run twice equal {refs[0] == refs[1]}; graph run twice equal {again == fast}")
        self.save()

    def greedy_check(self, label, model, st, B):
        "First check_tokens greedy tokens, set-up on vs off (transformers' eager dynamic-cache path), same prompts."
        res = self.result["models"][label]
        fast = res.get(f"b{B}", {}).get("tokens") if isinstance(res.get(f"b{B}"), dict) else None
        if fast is None or self.over(): return
        args = self.args
        st.enabled = False
        try: _, ref = timed(model, gen_kwargs(self.prompt(B, args.prompt_len, model.config.vocab_size, model.device), args.check_tokens, {}))
        finally: st.enabled = True
        ref = ref[:, args.prompt_len:].tolist()
        rows = [next((i for i, (x, y) in enumerate(zip(a[:args.check_tokens], b)) if x != y), None) for a, b in zip(fast, ref)]
        margins = []   # at each row's first flip: the eager model's logits on the fast path's own prefix
        prompt = self.prompt(B, args.prompt_len, model.config.vocab_size, model.device)
        st.enabled = False
        try:
            for r, j in enumerate(rows):
                if j is None: margins.append(None); continue
                seq = torch.cat([prompt[r], torch.tensor(fast[r][:j], device=prompt.device)])[None]
                with torch.no_grad(): lg = model(input_ids=seq).logits[0, -1].float()
                top = lg.topk(2).values
                margins.append(dict(step=j, top2_gap=float(top[0] - top[1]), logit_range=float(lg.max() - lg.min()),
                                    fast_minus_eager_token=float(lg[fast[r][j]] - lg[ref[r][j]])))
        finally: st.enabled = True
        res.setdefault("greedy_vs_eager", {})[f"b{B}"] = dict(tokens=args.check_tokens, first_mismatch_per_row=rows,
                                                              all_equal=all(m is None for m in rows), margins=margins)
        log(f"  {label} greedy {args.check_tokens} tokens vs eager, batch {B}: first mismatch per row {rows}; "
            f"at the flips (eager logits): {[m and (round(m['top2_gap'], 4), round(m['fast_minus_eager_token'], 4)) for m in margins]}")
        self.save()


def main():
    global T0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="llama2-7b", choices=list(SHAPES))
    ap.add_argument("--device", default="cuda"); ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--batches", default="1,8,32"); ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2); ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128); ap.add_argument("--ttft-len", type=int, default=2048)
    ap.add_argument("--check-tokens", type=int, default=32); ap.add_argument("--lm-head", action="store_true")
    ap.add_argument("--skip-fp16", action="store_true"); ap.add_argument("--tuned")
    ap.add_argument("--fp16-loop", action="store_true", help="also the fp16 model through gptq_nb's decode loop (install_generate)")
    ap.add_argument("--ab-ordered", action="store_true", help="also a second quantized model whose decode kernel sums "
                    "split-K partials in order (the pre-atomic default), batches <= 8: the atomic sums' gain in one call")
    ap.add_argument("--ab-scratch", action="store_true", help="also the quantized model's TTFT with the whole W dequantized "
                    "per call (DEQUANT_SCRATCH unlimited) against its column slices, in one call")
    ap.add_argument("--ab-pdl", action="store_true", help="also a second quantized model set up with FastGenerate(pdl=False) "
                    "(no programmatic dependent launches in the decode step), every batch: PDL's gain in one call")
    ap.add_argument("--fp16-pdl", action="store_true", help="also a second fp16 model compiled with inductor's PDL "
                    "(triton.enable_pdl), batches <= 8: what the same switch would give fp16 (not transformers' default)")
    ap.add_argument("--time-limit", type=float, default=1e9, help="seconds; later phases are skipped past it")
    args = ap.parse_args()
    T0 = time.time()
    args.batches = [int(b) for b in args.batches.split(",")]
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available(): sys.exit("no CUDA device: use --model tiny --device cpu")
    tiny = args.model == "tiny"
    if tiny: args.prompt_len, args.new_tokens, args.ttft_len, args.check_tokens = 16, 40, 300, 8
    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    if args.tuned: decode.gemm.load_tuning(args.tuned)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"s3_generate_{args.model}.json")
    meta = dict(protocol="S3 via model.generate", date=datetime.datetime.now().isoformat(timespec="seconds"),
                argv=sys.argv, torch=torch.__version__, transformers=transformers.__version__, device=str(dev))
    try: meta["commit"] = os.environ.get("COMMIT") or subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    except Exception: pass
    if dev.type == "cuda": meta["card"] = torch.cuda.get_device_name(dev)
    import torch._inductor.config as ic
    meta["inductor_pdl"] = hasattr(ic.triton, "enable_pdl")
    result = dict(meta=meta, model=args.model, config=SHAPES[args.model], prompt_len=args.prompt_len,
                  new_tokens=args.new_tokens, runs=args.runs, models={})
    save = lambda: json.dump(result, open(path, "w"), indent=1)
    for k in ("recompile_limit", "cache_size_limit"):   # two models compiled side by side share the frames' caches
        if hasattr(torch._dynamo.config, k): setattr(torch._dynamo.config, k, 32)
    fl = "fp16" if dtype == torch.float16 else "fp32"
    try:
        cfg = LlamaConfig(**SHAPES[args.model], rms_norm_eps=1e-5, tie_word_embeddings=False, attn_implementation="sdpa")
        run = Runner(args, result, save)
        models = {}
        if not args.skip_fp16:
            fp = decode.build_model(cfg, dev, dtype); fp.generation_config.pad_token_id = 0
            extra = dict(cache_implementation="static")
            if dev.type != "cuda":   # transformers compiles on accelerators only; the smoke test compiles with dynamo's eager backend
                cc = transformers.CompileConfig(backend="eager"); cc._compile_all_devices = True; extra["compile_config"] = cc
            models[fl] = (fp, extra)
            result["fp_bytes"] = model_bytes(fp)
            if args.fp16_loop:   # the same fp16 model given gptq_nb's set-up; its static-cache row above declines it
                install_generate(fp, **({} if dev.type == "cuda" else dict(devices=("cpu",))))
                models[fl + "+gptq_nb_loop"] = (fp, {})
        t1 = time.time()
        qm = decode.build_model(cfg, dev, dtype); qm.generation_config.pad_token_id = 0
        nq = decode.quantize_in_place(qm, dev, dtype)
        q = next(m for m in qm.modules() if isinstance(m, QuantLinear))
        kw = {}
        if dev.type != "cuda":
            cc = transformers.CompileConfig(backend="eager"); cc._compile_all_devices = True
            kw = dict(devices=("cpu",), compile_config=cc)
        st = install_generate(qm, **kw)
        models["gptq"] = (qm, {})
        result["quant"] = dict(layers=nq, bits=4, group_size=128, format=q.checkpoint_format, build_s=time.time() - t1,
                               bytes=model_bytes(qm), backend=resolve_backend(q, torch.zeros(1, q.in_features, device=dev, dtype=dtype)),
                               compile_config=st.compile_config.to_dict())
        log(f"built {args.model} fp16 + gptq ({nq} layers, backend {result['quant']['backend']!r}) in {time.time() - T0:.1f} s")
        for i, B in enumerate(args.batches):
            for label, (m, extra) in models.items(): run.batch(label, m, extra, B)
            if B in (1, 8): run.greedy_check("gptq", qm, st, B); run.graph_check("gptq", qm, st, B)
            if i == 0:
                for label, (m, extra) in models.items(): run.ttft(label, m, extra)
        result["merged_groups"] = st.merged_groups; result["cache_calls"] = st.calls[-12:]; save()
        if args.ab_scratch and not run.over():
            from gptq_nb.kernels import gemm as G
            cap, G.DEQUANT_SCRATCH = G.DEQUANT_SCRATCH, 1 << 40
            try:
                log("== gptq, whole-W dequantize in the prefill (A/B)")
                run.ttft("gptq_whole_W", qm, {})
            finally: G.DEQUANT_SCRATCH = cap
            run.ttft("gptq_sliced_again", qm, {})
        if args.ab_ordered and not run.over():
            from gptq_nb.kernels import gemm as G
            rule = G._decode_rule
            G._decode_rule = lambda *a: (lambda c: c and c._replace(atomic_reduce=False))(rule(*a))
            G._PLANS.clear()
            try:
                qo = decode.build_model(cfg, dev, dtype); qo.generation_config.pad_token_id = 0
                decode.quantize_in_place(qo, dev, dtype); install_generate(qo, **kw)
                log("== gptq, ordered split-K sums (A/B)")
                for B in [b for b in args.batches if b <= 8]: run.batch("gptq_ordered_sums", qo, {}, B)
            finally: G._decode_rule = rule
            del qo
            if dev.type == "cuda": torch.cuda.empty_cache()
        if args.ab_pdl and not run.over():
            qp = decode.build_model(cfg, dev, dtype); qp.generation_config.pad_token_id = 0
            decode.quantize_in_place(qp, dev, dtype); install_generate(qp, pdl=False, **kw)
            log("== gptq without PDL (A/B)")
            for B in args.batches: run.batch("gptq_no_pdl", qp, {}, B)
            del qp
            if dev.type == "cuda": torch.cuda.empty_cache()
        if args.fp16_pdl and not args.skip_fp16 and not run.over():
            import torch._inductor.config as ic
            fq = decode.build_model(cfg, dev, dtype); fq.generation_config.pad_token_id = 0
            log("== fp16 with inductor PDL (not transformers' default)")
            with ic.patch({"triton.enable_pdl": True}):
                for B in [b for b in args.batches if b <= 8]: run.batch("fp16_inductor_pdl", fq, dict(cache_implementation="static"), B)
            del fq
            if dev.type == "cuda": torch.cuda.empty_cache()
        if args.lm_head and not run.over():
            for a in ("_compiled_call", "_last_compile_config"):
                if hasattr(qm, a): delattr(qm, a)
            head = qm.lm_head
            qm.lm_head = decode.random_quantlinear(head.in_features, head.out_features, dev, dtype, seed=99)
            del head
            if dev.type == "cuda": torch.cuda.empty_cache()
            log("== gptq + 4-bit lm_head")
            for B in [b for b in args.batches if b <= 8]: run.batch("gptq+4bit_lm_head", qm, {}, B)
    except Exception as e:
        result["error"] = traceback.format_exc()[-4000:]
        log(f"!! failed: {type(e).__name__}: {e}"); traceback.print_exc()
    result["wall_s"] = time.time() - T0
    save()
    log(f"\nS3 via generate, {meta.get('card', dev)}, {args.model}, prompt {args.prompt_len} + {args.new_tokens} new, best of {args.runs}; wrote {path}")
    base = result["models"].get(fl, {})
    log(f"{'model':18} {'batch':>5} {'tok/s':>9} {'ratio':>6} {'first call s':>12} {'set-up s':>9}")
    for label, rs in result["models"].items():
        for k, v in rs.items():
            if not (k.startswith("b") and isinstance(v, dict) and "tok_s" in v): continue
            b = base.get(k, {}); ratio = v["tok_s"] / b["tok_s"] if isinstance(b, dict) and "tok_s" in b else float("nan")
            log(f"{label:18} {k[1:]:>5} {v['tok_s']:9.1f} {ratio:6.2f} {v['first_call_s']:12.1f} {v['setup_s']:9.1f}")
        if isinstance(rs.get("ttft"), dict) and "best_s" in rs["ttft"]:
            log(f"{label:18} TTFT {rs['ttft']['prompt_len']}: {rs['ttft']['best_s'] * 1e3:.1f} ms, peak {rs.get('peak_mem_gib', float('nan')):.2f} GiB")
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
