"""Does capping the decode kernel's registers (Triton's `maxnreg`) buy occupancy worth its spills? (issue 10)

Run on the lent GPU from the repo root:  PYTHONPATH=. python3 kernels/maxnreg_check.py --out $OUT
ncu (kernels/ncu_decode.py, session 9) read the m = 1 decode kernel as latency-bound: 80 registers a thread hold
one-warp programs to 24 per SM (37.5% occupancy; 18–28% achieved), ~8 cycles per issued instruction, 22–40% of DRAM
bandwidth on 7–8B layers. ptxas at 64 registers spills 68 bytes a thread (56 loaded) and allows 32 programs an SM.
Here: `gptq_gemm` on the Llama-2-7B and Llama-3-8B sets at m = 1 as the rule runs it, then compiled with maxnreg 64
and 72, each checked against float64 and graph-timed back to back (bench.graph_time) in this one process.
"""
import argparse, json, os, datetime
import torch
from kernels.bench import graph_time, layer, copies, n_copies, qbytes, rel, safe, log, args_of, family_totals
from kernels.gemv_reduce import SETS
from gptq_nb.kernels import gemm as G

_orig = G._compile_launch


def capped(n):
    def f(kernel, grid, args, consts, warps, stages):
        ck = kernel[grid](*args, **consts, num_warps=warps, num_stages=stages, **({"maxnreg": n} if n else {}))
        return ck, [consts[k] for k in kernel.arg_names[len(args):]]
    return f


def main():
    ap = argparse.ArgumentParser(); ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--sets", default="Llama-2-7B,Llama-3-8B")
    a = ap.parse_args()
    rec = dict(date=str(datetime.date.today()), card=torch.cuda.get_device_name(), commit=os.environ.get("COMMIT", ""), shapes={}, sets={})
    for fam in a.sets.split(","):
        for (K, N) in SETS[fam]:
            L = layer(K, N, seed=K + 3 * N); Ls = copies(L, n_copies(qbytes(L)))
            x = torch.randn(1, K, device="cuda", dtype=torch.float16)
            ref = G.ref_gemm(x, **args_of(L, False))
            r = {}
            for tag, n in (("rule", None), ("maxnreg64", 64), ("maxnreg72", 72)):
                G._compile_launch = capped(n); G._FAST.clear()
                y = G.gptq_gemm(x, **args_of(Ls[0], False)); y = G.gptq_gemm(x, **args_of(Ls[0], False))
                e = rel(y, ref)
                r[tag] = dict(us=safe(graph_time, [lambda A=A: G.gptq_gemm(x, **args_of(A, False)) for A in Ls]) * 1e3 if e < 2e-3 else float("inf"), err=e)
            G._compile_launch = _orig; G._FAST.clear()
            rec["shapes"][f"{K}x{N}"] = {1: r}   # keyed by m, as the other scripts
            log(f"{fam} {K}x{N} m=1 " + "  ".join(f"{t} {v['us']:.2f} us (err {v['err']:.1e})" for t, v in r.items()))
            del Ls, L; torch.cuda.empty_cache()
        tot = family_totals(rec["shapes"], SETS[fam], 1, lambda t, v: v["us"])
        rec["sets"][fam] = tot
        log(f"  {fam}: " + "  ".join(f"{t} {v:.1f} us" for t, v in tot.items()))
    os.makedirs(a.out, exist_ok=True)
    json.dump(rec, open(os.path.join(a.out, "maxnreg_check.json"), "w"), indent=1)


if __name__ == "__main__": main()
