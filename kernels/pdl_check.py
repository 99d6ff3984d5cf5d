"""Programmatic dependent launch (PDL, `settled_weights`) for the decode and tensor-core kernels (issues 10, 11).

Run on the lent GPU from the repo root:  PYTHONPATH=. python3 kernels/pdl_check.py --out $OUT [--ms 1,2,4,8,16,32]

For every layer shape of six families (merged q/k/v and gate/up, as `generate` runs them) and each m: `gptq_gemm` as a
user calls it (the rule), outside and inside `settled_weights()`, each checked against float64, then CUDA-graph timed
two ways: back to back (>= 64 calls over weight copies several times the L2: protocol S1's graph timing; consecutive
calls of our own kernels overlap there, which a decoder only has between unmerged projections), and each call behind
a small torch kernel that is not PDL-aware (an RMSNorm-sized `mul_` on the activations), the neighbour a real decode
step gives it: that pair's time less the `mul_` alone. Writes pdl_check.json.
"""
import argparse, json, os, time
import torch
from kernels.bench import graph_time, layer, rel, safe, log, args_of, family_totals, shape_case, results_header
from kernels.gemv_reduce import SETS
from gptq_nb.kernels import gemm as G


def chain_check(reps=10):
    """PDL's waits: layers fed straight from the previous layer's output (no kernel between, so a read before the wait
    would see stale or half-written activations), m = 1, 2 and 8, one CUDA graph replayed `reps` times inside
    `settled_weights` against the same chain run eagerly outside it: relative difference per replay."""
    out = {}
    for m in (1, 2, 8):
        Ls = [layer(4096, 4096, seed=200 + i) for i in range(6)]
        x0 = torch.randn(m, 4096, device="cuda", dtype=torch.float16)
        def chain(x):   # a torch kernel (the scale) between layers
            for L in Ls: x = G.gptq_gemm(x, **args_of(L, False)) * 0.05
            return x
        def direct(x):  # each layer reads the previous layer's output directly (4 layers: ~5.6x growth each stays in fp16)
            for L in Ls[:4]: x = G.gptq_gemm(x, **args_of(L, False))
            return x
        res = {}
        for name, f in (("with_scale", chain), ("direct", direct)):
            ref = f(x0.clone()).double()
            with G.settled_weights():
                xin = x0.clone(); f(xin); torch.cuda.synchronize()
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g): y = f(xin)
            worst = 0.0
            for _ in range(reps):
                g.replay(); torch.cuda.synchronize()
                worst = max(worst, rel(y, ref) if torch.isfinite(ref).all() else float("nan"))
            res[name] = dict(worst_rel=worst, ref_finite=bool(torch.isfinite(ref).all()), ref_norm=float(ref.norm()))
            del g
        out[m] = res
        log(f"chain m={m}: {res}")
    return out


def main():
    ap = argparse.ArgumentParser(); ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--ms", default="1,2,4,8,16,32"); ap.add_argument("--budget", type=float, default=240)
    ap.add_argument("--sets", default=",".join(SETS)); ap.add_argument("--chain", action="store_true")
    a = ap.parse_args()
    ms = [int(v) for v in a.ms.split(",")]
    t00 = time.time()
    rec = results_header(pdl_ok=G._pdl_ok(), shapes={}, sets={})
    log("PDL available:", rec["pdl_ok"])
    bad = []
    if a.chain: rec["chain"] = chain_check()
    for fam in a.sets.split(","):
        shapes = SETS[fam]
        if time.time() - t00 > a.budget: log("budget spent before", fam); break
        for (K, N) in shapes:
            L, Ls, Ws = shape_case(K, N)
            per = {}
            for m in ms:
                x = torch.randn(m, K, device="cuda", dtype=torch.float16)
                ref = G.ref_gemm(x, **args_of(L, False))
                call = lambda A: G.gptq_gemm(x, **args_of(A, False))
                r = dict(fp16=safe(graph_time, [lambda w=w: torch.matmul(x, w) for w in Ws]) * 1e3)
                nb = lambda: x.mul_(1.0)   # a small non-PDL kernel on the activations, as a norm would be
                r["fp16_behind"] = (safe(graph_time, [lambda w=w: (nb(), torch.matmul(x, w)) for w in Ws]) -
                                    safe(graph_time, [nb])) * 1e3
                for tag, on in (("gptq", False), ("gptq+pdl", True)):
                    with G.settled_weights(on):
                        y = call(Ls[0]); err = rel(y, ref)
                        if err > 2e-3: bad.append((K, N, m, tag, err)); log("  FAIL", K, N, m, tag, err); continue
                        r[tag] = safe(graph_time, [lambda A=A: call(A) for A in Ls]) * 1e3
                        r[tag + "_behind"] = (safe(graph_time, [lambda A=A: (nb(), call(A)) for A in Ls]) -
                                              safe(graph_time, [nb])) * 1e3
                        r[tag + "_err"] = err
                per[m] = r
                log(f"{fam:13s} {K:5d}x{N:<6d} m={m:<3d} " + "  ".join(f"{k} {v:6.2f}" for k, v in r.items() if not k.endswith("err")))
            rec["shapes"][f"{K}x{N}"] = per
            del Ls, Ws
            torch.cuda.empty_cache()
        sums = {}
        for m in ms:
            tot = family_totals(rec["shapes"], shapes, m, lambda k, v: None if k.endswith("err") else v)
            sums[m] = dict(us=tot, back_to_back=dict(gptq=tot["fp16"] / tot.get("gptq", 1e9), pdl=tot["fp16"] / tot.get("gptq+pdl", 1e9)),
                           behind=dict(gptq=tot["fp16_behind"] / tot.get("gptq_behind", 1e9),
                                       pdl=tot["fp16_behind"] / tot.get("gptq+pdl_behind", 1e9)))
            log(f"  {fam} m={m}: x fp16 back to back {sums[m]['back_to_back']}, behind a torch kernel {sums[m]['behind']}")
        rec["sets"][fam] = sums
    rec["failures"] = bad
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "pdl_check.json"), "w") as f: json.dump(rec, f, indent=1)
    log("failures:", bad, f"[{time.time() - t00:.0f} s]")


if __name__ == "__main__": main()
