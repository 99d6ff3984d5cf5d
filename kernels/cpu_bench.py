"""CPU decode of the demo model through `model.generate`: float32 SmolLM2-135M against its 4-bit g128 checkpoint.

From the repo root:  PYTHONPATH=. python kernels/cpu_bench.py [--ckpt DIR] [--out DIR]

Model: the demo's SmolLM2-135M-Instruct (PROTOCOL.md A1; `gptq_nb.demo.load_default_model`, float32). Without --ckpt
the checkpoint is built the demo's way minus the solver: round-to-nearest codes on the 4-bit g128 asymmetric grid
(speed does not depend on the codes' values), `save_quantized`, then `from_quantized(dtype=float32)` as a user loads
it. Greedy, `min_new_tokens` = `max_new_tokens`, one untimed call, best of --runs, the float and quantized models' runs
interleaved (the machine's load moves; both see the same). decode tokens/s = (N - 1) / (time of
an N-token call - time of a 1-token call), i.e. prefill removed; per-call tokens/s (prefill included) is reported too.
Variants: the float model; the checkpoint on gptq_nb's default (backend 'auto': the CPU int4 kernel of 14_cpu); the
torch reference backend (the old default, dequantizing per call; fewer tokens, it is slow) and that backend with
`cache_weight=True` (a float copy kept: fast, but no memory saving). Memory: bytes of parameters + buffers + the int4
backend's repacked copies. Also perplexity on the first --ppl-windows WikiText-2 windows (2048 tokens) for the float
model, the torch backend and the int4 backend (the int4 kernel computes in bf16).
"""
import argparse, copy, datetime, json, os, subprocess, sys, tempfile, time
import torch


def nbytes(model):
    seen, n = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() in seen: continue
        seen.add(t.data_ptr()); n += t.numel() * t.element_size()
    for m in model.modules():   # the CPU backend's repacked weights
        st = getattr(m, "_cpu_int4", None)
        if st is not None and not isinstance(st[1], str): n += sum(x.numel() * x.element_size() for x in st[1][:2])
    return n


def timed(model, ids, n):
    t0 = time.perf_counter()
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                         do_sample=False, pad_token_id=0)
    return time.perf_counter() - t0, out[0, ids.shape[1]:].tolist()


def bench(model, ids, n, runs):
    timed(model, ids, min(n, 4))                                        # warm-up (repacking, allocator)
    t1 = min(timed(model, ids, 1)[0] for _ in range(runs))
    res = [timed(model, ids, n) for _ in range(runs)]
    tn = min(r[0] for r in res)
    return dict(new_tokens=n, call_s=tn, prefill_s=t1, tok_s_call=n / tn, tok_s_decode=(n - 1) / max(tn - t1, 1e-9),
                tokens=res[0][1])


def slow_variants(r, qm, ids, args, nbytes, bench):
    from gptq_nb.qlinear import set_backend, QuantLinear
    set_backend(qm, "torch")
    for m in qm.modules():
        if isinstance(m, QuantLinear): m._cpu_int4 = None
    r["results"]["gptq torch backend (old default)"] = dict(bench(qm, ids, args.slow_tokens, 1), bytes=nbytes(qm))
    print("torch", r["results"]["gptq torch backend (old default)"], flush=True)
    for m in qm.modules():
        if isinstance(m, QuantLinear): m.cache_weight = True
    r["results"]["gptq torch backend, cache_weight=True"] = dict(bench(qm, ids, args.new_tokens, args.runs),
        bytes=nbytes(qm) + sum(m._wcache[1].numel() * 4 for m in qm.modules() if isinstance(m, QuantLinear) and m._wcache))
    for m in qm.modules():
        if isinstance(m, QuantLinear): m.cache_weight, m._wcache = False, None
    set_backend(qm, "auto")


def bench_pair(models, ids, n, runs):
    "`bench` for several models with their runs interleaved (a, b, a, b, ...), so all see the same machine load."
    for m in models.values(): timed(m, ids, min(n, 4))
    t1 = {k: min(timed(m, ids, 1)[0] for _ in range(runs)) for k, m in models.items()}
    res = {k: [] for k in models}
    for _ in range(runs):
        for k, m in models.items(): res[k].append(timed(m, ids, n))
    out = {}
    for k in models:
        tn = min(r[0] for r in res[k])
        out[k] = dict(new_tokens=n, call_s=tn, prefill_s=t1[k], tok_s_call=n / tn, tok_s_decode=(n - 1) / max(tn - t1[k], 1e-9),
                      runs_s=[r[0] for r in res[k]], tokens=res[k][0][1])
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ckpt"); ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--new-tokens", type=int, default=64); ap.add_argument("--slow-tokens", type=int, default=6)
    ap.add_argument("--runs", type=int, default=3); ap.add_argument("--ppl-windows", type=int, default=1)
    ap.add_argument("--skip-slow", action="store_true", help="skip the torch-backend variants")
    ap.add_argument("--threads", default="", help="comma list of torch thread counts to time float and default at (default: torch's)")
    args = ap.parse_args()
    from gptq_nb.demo import load_default_model, fetch_default_model
    from gptq_nb.quant import QuantizeConfig
    from gptq_nb.qlinear import pack_model, set_backend, QuantLinear
    from gptq_nb.quantize import rtn_quantize_model
    from gptq_nb.io import save_quantized, from_quantized
    fl, tok = load_default_model(fetch_default_model())
    ids = tok("The Eiffel Tower is 324 metres tall, about the same height as an 81-storey building. It was the tallest "
              "man-made structure in the world until", return_tensors="pt").input_ids
    meta = dict(loadavg_start=open("/proc/loadavg").read().split()[:3], date=datetime.datetime.now().isoformat(timespec="seconds"), torch=torch.__version__,
                threads=torch.get_num_threads(), prompt_tokens=ids.shape[1], cpu=open("/proc/cpuinfo").read().split("model name")[1].split("\n")[0].strip(": "),
                commit=subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip())
    tmp = None
    if args.ckpt: path = args.ckpt
    else:
        tmp = tempfile.TemporaryDirectory(); path = os.path.join(tmp.name, "smollm2-rtn-4bit-g128")
        q = rtn_quantize_model(copy.deepcopy(fl), QuantizeConfig(bits=4, group_size=128, sym=False))
        save_quantized(pack_model(q), path, tokenizer=tok); del q
    qm = from_quantized(path, dtype=torch.float32)
    r = dict(meta=meta, checkpoint=args.ckpt or "RTN 4-bit g128 asym (built here)", results={})
    print(meta, flush=True)
    from gptq_nb.qlinear import resolve_backend
    default_threads = torch.get_num_threads()
    for th in [int(t) for t in args.threads.split(",") if t] or [default_threads]:
        torch.set_num_threads(th); sfx = "" if th == default_threads else f", {th} thread(s)"
        pair = bench_pair({"float32": fl, "gptq default (auto)": qm}, ids, args.new_tokens, args.runs)
        r["results"]["float32" + sfx] = dict(pair["float32"], bytes=nbytes(fl), threads=th)
        r["results"]["gptq default (auto)" + sfx] = dict(pair["gptq default (auto)"], bytes=nbytes(qm), threads=th,
            backends=sorted({resolve_backend(m, torch.zeros(1, m.in_features)) for m in qm.modules() if isinstance(m, QuantLinear)}))
        print(th, {k: round(v["tok_s_decode"], 2) for k, v in r["results"].items()}, flush=True)
    torch.set_num_threads(default_threads)
    if not args.skip_slow: slow_variants(r, qm, ids, args, nbytes, bench)
    if args.ppl_windows:
        from gptq_nb.data import wikitext2_test_text
        from gptq_nb.eval import eval_windows, perplexity
        win = eval_windows(tok, wikitext2_test_text(), 2048, args.ppl_windows)
        r["ppl"] = dict(windows=args.ppl_windows, float32=perplexity(fl, win, progress=False))
        set_backend(qm, "torch"); r["ppl"]["gptq torch backend"] = perplexity(qm, win, progress=False)
        set_backend(qm, "auto"); r["ppl"]["gptq cpu_int4 (bf16)"] = perplexity(qm, win, progress=False)
    base = r["results"]["float32"]["tok_s_decode"]
    meta["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    print(f"\nCPU decode, SmolLM2-135M, {meta['cpu']}, {meta['threads']} threads, prompt {ids.shape[1]} tokens, greedy")
    print(f"{'variant':40} {'decode tok/s':>12} {'call tok/s':>10} {'ratio':>6} {'MiB':>7}")
    for k, v in r["results"].items():
        fb = r["results"].get(k.replace("gptq default (auto)", "float32"), {}).get("tok_s_decode", base)
        print(f"{k:40} {v['tok_s_decode']:12.2f} {v['tok_s_call']:10.2f} {v['tok_s_decode'] / fb:6.2f} {v['bytes'] / 2**20:7.1f}")
    if "ppl" in r: print("perplexity:", r["ppl"])
    os.makedirs(args.out, exist_ok=True)
    json.dump(r, open(os.path.join(args.out, "cpu_bench.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
