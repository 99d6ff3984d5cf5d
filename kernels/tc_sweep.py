"""The tensor-core GEMV (nbs/22a_kernel_tc) against float64, and the dispatch rule with it against the rule without it
(issues 10, 11).

Run on the lent GPU from the repo root:  PYTHONPATH=. python3 kernels/tc_sweep.py --out $OUT [--ms 1,2,4,8]

First odd shapes through `gptq_gemm` with the config forced (groups 32/64/128/-1, v1/v2 zeros, bias, 2-16 rows, N not
a multiple of 32, split-K or not, inside `settled_weights` or not, an activation view off 16-byte alignment) and
`bench.check_calls` (QuantLinear's cached direct launches, CUDA-graph capture); then, per layer shape of six families
(merged q/k/v and gate/up, as `generate` runs them) and each m: fp16 (faster of matmul / F.linear), the rule
(`pick_config`), the best candidate after the tensor-core GEMV (what the rule picked before it), and the GEMV with
its split cap at 256/m instead of 128/m; each checked against float64, graph-timed inside `settled_weights`.
Writes tc_sweep.json.
"""
import argparse, os
import torch
from kernels.bench import rel, log, args_of, results_header, layer, check_calls, config_sweep
from kernels.gemv_reduce import SETS
from gptq_nb.kernels import gemm as G
from gptq_nb.kernels.tc import TCDecodeConfig


def odd_checks():
    bad, n = [], 0
    for (K, N, gs) in [(256, 40, 32), (512, 200, 64), (1024, 96, 128), (768, 72, -1), (4096, 136, 128), (384, 8, 128), (2048, 4104, 128)]:
        for fmt in ("gptq", "gptq_v2"):
            L = layer(K, N, gs=gs, fmt=fmt, seed=K + N)
            A = args_of(L, False)
            for m in (2, 3, 5, 8, 11, 16):
                x = torch.randn(m, K, device="cuda", dtype=torch.float16)
                xo = torch.randn(m * K + 4, device="cuda", dtype=torch.float16)[4:].view(m, K)   # 8 bytes off
                b = torch.randn(N, device="cuda", dtype=torch.float16)
                for sk in (1, 3, 64):
                    for pdl in (False, True):
                        with G.settled_weights(pdl):
                            for xx in ((x, xo) if sk == 3 else (x,)):
                                ref = G.ref_gemm(xx, bias=b, **A)
                                y = G.gptq_gemm(xx, bias=b, config=TCDecodeConfig(split_k=sk), **A)
                                e = rel(y, ref); n += 1
                                if not e <= 2e-3: bad.append((K, N, gs, fmt, m, sk, pdl, e)); log("  ODD FAIL", bad[-1])
    left = G._sums("cuda", 1).abs().max().item()
    if left != 0: bad.append(("sums row not zero after", left))
    log(f"odd shapes: {n} runs, {len(bad)} failures")
    return bad


def variants(m, K, N):
    "The rule, the rule without the tensor-core GEMV, and the GEMV (where it can run) at the rule's splits capped at 128/m and 256/m."
    cands = [(nm, c) for nm, c, why in G.kernel_candidates(m, K, N) if c is not None]
    vs = dict(rule=cands[0][1], before=next(c for nm, c in cands if nm != "tc"))
    if G.tc_why_not(m, K, N, 4, False, 128, torch.float16, "cuda") is None:
        sms = G._sms("cuda")
        vs["tc"] = TCDecodeConfig(split_k=G._tc_splits(m, K, N, sms))
        vs["tc_cap256"] = TCDecodeConfig(split_k=G._tc_splits(m, K, N, sms, cap=256))
    return vs


def main():
    ap = argparse.ArgumentParser(); ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--ms", default="1,2,4,8,16"); ap.add_argument("--budget", type=float, default=300)
    ap.add_argument("--sets", default=",".join(SETS))
    a = ap.parse_args()
    rec = results_header(shapes={}, sets={}, configs={})
    bad = odd_checks()
    rec["check_calls"] = check_calls()
    config_sweep("tc_sweep.json", {f: SETS[f] for f in a.sets.split(",")}, [int(v) for v in a.ms.split(",")], variants,
                 rec, bad, a.out, a.budget, fill=("tc", "tc_cap256"))


if __name__ == "__main__": main()
