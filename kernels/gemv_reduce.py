"""How the decode kernel's split-K partials are summed, and how many splits it takes (issues 10, 11), on many models' shapes.

Run on the lent GPU from the repo root:  PYTHONPATH=. python3 kernels/gemv_reduce.py --out $OUT [--ms 1,2,4]

For every distinct layer shape of six families (merged q/k/v and gate/up, as `generate` runs them) and m = 1, 2, 4:
the rule's `DecodeConfig` as it stands ("ordered": each split parks its fp32 partial, the last program sums them
RED at a time), the same with all partials loaded at once ("ordered-all"), and fp32 atomic sums in L2
(`atomic_reduce=True`) at the rule's split count and at half and twice it (the session-8 runs also timed a per-thread
fence before the barrier, since removed: it cost half the gain and fixed nothing). Each variant is checked against float64
first (and its output against the rule's), then timed in one CUDA graph of >= 64 calls over weight copies several times
the L2 (`bench.graph_time`), beside fp16 (faster of matmul / F.linear; its `fp16` field is µs, ms in files before 2026-12-03's session 10). Prints per-shape µs, per-family sums and the
ratio to fp16; writes gemv_reduce.json.
"""
import argparse, json, os, time
import torch
from kernels.bench import graph_time, layer, rel, safe, log, args_of, family_totals, shape_case, fp16_us, results_header
from gptq_nb.kernels import gemm as G
from gptq_nb.kernels.gemv import decode_plan

SETS = {
    "Llama-2-7B": [(4096, 12288), (4096, 4096), (4096, 22016), (11008, 4096)],
    "Llama-3-8B": [(4096, 6144), (4096, 4096), (4096, 28672), (14336, 4096)],
    "Qwen2.5-7B": [(3584, 4608), (3584, 3584), (3584, 37888), (18944, 3584)],
    "Llama-3.2-1B": [(2048, 3072), (2048, 2048), (2048, 16384), (8192, 2048)],
    "Phi-3-mini": [(3072, 9216), (3072, 3072), (3072, 16384), (8192, 3072)],
    "Llama-2-70B": [(8192, 10240), (8192, 8192), (8192, 57344), (28672, 8192)],
}


def variants(m, K, N):
    "(name, Plan) for this call: the rule's and its reduction / split alternatives."
    cfg = G.pick_config(m, K, N, 4, 128, "cuda")
    if cfg.kind != "decode": return []
    mk = lambda c: decode_plan(m, K, N, 4, 128, 1, False, torch.float16, c)
    rule = mk(cfg._replace(atomic_reduce=False))
    out = [("ordered", rule)]
    if rule.split_k > rule.consts["RED"] > 0:
        out.append(("ordered-all", rule._replace(consts=dict(rule.consts, RED=1 << (rule.split_k - 1).bit_length()))))
    for f, tag in ((1, ""), (0.5, "/2"), (2, "x2")):
        sk = max(2, int(cfg.split_k * f))
        c = cfg._replace(split_k=sk, atomic_reduce=True)
        try: p = mk(c)
        except ValueError: continue
        if tag and p.split_k == rule.split_k: continue
        out.append((f"atomic{tag}", p))
    return out


def stress(reps, ms):
    """Each atomic variant of every 7B/8B/70B shape `reps` times eagerly and `reps` graph replays: its output against the
    ordered kernel's (a lost partial shows as ~1/sqrt(splits) relative), and the shared sums row zero afterwards."""
    fails, runs = [], 0
    for fam in ("Llama-2-7B", "Llama-3-8B", "Llama-2-70B"):
        for (K, N) in SETS[fam]:
            L = layer(K, N, seed=K + 5 * N)
            for m in sorted(set(ms) | {1, 2, 3, 4}):
                x = torch.randn(m, K, device="cuda", dtype=torch.float16)
                vs = variants(m, K, N)
                if not vs: continue
                f = lambda p: G._run_plan(p, x, L["qweight"], L["qzeros"], L["scales"], None, None)
                base = f(vs[0][1]).double()
                e0 = rel(base, G.ref_gemm(x, **args_of(L, False)))
                if e0 > 2e-3: fails.append((K, N, m, "ordered vs float64", e0, 0.0)); log("  STRESS FAIL ordered", K, N, m, e0)
                for name, p in vs[1:]:
                    if p.consts["RED"] != 0 and name != "ordered-all": continue
                    worst = 0.0
                    for _ in range(reps): worst = max(worst, rel(f(p), base))
                    g = torch.cuda.CUDAGraph(); f(p); torch.cuda.synchronize()
                    with torch.cuda.graph(g): y = f(p)
                    for _ in range(reps): g.replay(); worst = max(worst, rel(y, base))
                    torch.cuda.synchronize(); del g
                    left = float(G._sums("cuda", 1).abs().max())
                    runs += 2 * reps
                    if worst > 1e-3 or left != 0: fails.append((K, N, m, name, worst, left)); log("  STRESS FAIL", K, N, m, name, worst, left)
    log(f"stress: {runs} runs, {len(fails)} failing variants")
    return dict(runs=runs, fails=fails)


def dequant_slices(ms=(256, 2048)):
    "Dequantize-then-cuBLAS with the W scratch capped at DEQUANT_SCRATCH (column slices) against one whole W: error, time, scratch."
    from gptq_nb.kernels.gemm import DequantConfig
    out, cap0 = {}, G.DEQUANT_SCRATCH
    for (K, N) in [(4096, 12288), (4096, 22016), (11008, 4096), (4096, 28672), (8192, 57344)]:
        L = layer(K, N, seed=K + 7 * N)
        for m in ms:
            x = torch.randn(m, K, device="cuda", dtype=torch.float16)
            ref = G.ref_gemm(x, **args_of(L, False))
            r = {}
            for tag, cap in (("sliced", 32 << 20), ("whole", 1 << 40)):
                G.DEQUANT_SCRATCH = cap
                f = lambda: G.gptq_gemm(x, **args_of(L, False), config=DequantConfig())
                torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); m0 = torch.cuda.memory_allocated()
                y = f(); torch.cuda.synchronize()
                r[tag] = dict(err=rel(y, ref), scratch_mib=(torch.cuda.max_memory_allocated() - m0) / 2**20,
                              us=graph_time([f], min_calls=16) * 1e3)
            G.DEQUANT_SCRATCH = cap0   # the package's default again
            out[f"{m}/{K}/{N}"] = r
            log(f"dequant {K}x{N} m={m}: " + "  ".join(f"{t} {v['us']:.0f} us err {v['err']:.1e} peak +{v['scratch_mib']:.0f} MiB" for t, v in r.items()))
        del L; torch.cuda.empty_cache()
    return out


def main():
    ap = argparse.ArgumentParser(); ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--ms", default="1,2,4"); ap.add_argument("--budget", type=float, default=400)
    ap.add_argument("--sets", default=",".join(SETS)); ap.add_argument("--stress", type=int, default=0)
    ap.add_argument("--dequant", action="store_true")
    a = ap.parse_args()
    ms = [int(v) for v in a.ms.split(",")]
    t00 = time.time()
    rec = results_header(shapes={}, sets={})
    bad = []
    if a.stress: rec["stress"] = stress(a.stress, ms)
    if a.dequant: rec["dequant"] = dequant_slices()
    for fam in a.sets.split(","):
        shapes = SETS[fam]
        if time.time() - t00 > a.budget: log("budget spent before", fam); break
        for (K, N) in shapes:
            if f"{K}x{N}" in rec["shapes"]: continue
            L, Ls, Ws = shape_case(K, N)
            per = {}
            for m in ms:
                x = torch.randn(m, K, device="cuda", dtype=torch.float16)
                ref = G.ref_gemm(x, **args_of(L, False))
                r = dict(fp16=fp16_us(x, Ws))
                base = None
                for name, p in variants(m, K, N):
                    run = lambda A, p=p: G._run_plan(p, x, A["qweight"], A["qzeros"], A["scales"], None, None)
                    y = run(Ls[0]); y2 = run(Ls[0])
                    err = rel(y, ref)
                    if base is None: base = y
                    d = rel(y, base.double())
                    ok = err <= 2e-3
                    if not ok: bad.append((K, N, m, name, err)); log("  FAIL", K, N, m, name, err)
                    t = safe(graph_time, [lambda A=A: run(A) for A in Ls]) if ok else float("inf")
                    r[name] = dict(us=t * 1e3, err=err, vs_rule=d, repeat_equal=bool(torch.equal(y, y2)),
                                   split_k=p.split_k, red=p.consts["RED"], grid=list(p.grid))
                per[m] = r
                log(f"{fam:13s} {K:5d}x{N:<6d} m={m}  fp16 {r['fp16']:6.1f} us  " +
                    "  ".join(f"{n} {v['us']:6.1f}" for n, v in r.items() if isinstance(v, dict)))
            rec["shapes"][f"{K}x{N}"] = per
            del Ls, Ws
            torch.cuda.empty_cache()
        sums = {}
        for m in ms:
            tot = family_totals(rec["shapes"], shapes, m, lambda n, v: v["us"] if isinstance(v, dict) else v)
            best_atomic = sum(min(v["us"] for n, v in rec["shapes"][f"{K}x{N}"][m].items()
                                  if isinstance(v, dict) and n.startswith("atomic")) for (K, N) in shapes)
            tot["best-atomic"] = best_atomic
            sums[m] = {n: dict(us=t, vs_fp16=tot["fp16"] / t) for n, t in tot.items()}
            log(f"  {fam} m={m}: " + "  ".join(f"{n} {t:6.1f} us ({tot['fp16'] / t:4.2f}x)" for n, t in tot.items()))
        rec["sets"][fam] = sums
    rec["failures"] = bad
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "gemv_reduce.json"), "w") as f: json.dump(rec, f, indent=1)
    log("failures:", bad, f"[{time.time() - t00:.0f} s]")


if __name__ == "__main__": main()
