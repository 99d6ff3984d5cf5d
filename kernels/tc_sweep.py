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
import argparse, json, os, time
import torch
from kernels.bench import graph_time, rel, safe, log, args_of, family_totals, shape_case, fp16_us, results_header, layer, check_calls
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


def main():
    ap = argparse.ArgumentParser(); ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--ms", default="1,2,4,8,16"); ap.add_argument("--budget", type=float, default=300)
    ap.add_argument("--sets", default=",".join(SETS))
    a = ap.parse_args()
    ms = [int(v) for v in a.ms.split(",")]
    t00 = time.time()
    rec = results_header(shapes={}, sets={}, configs={})
    bad = odd_checks()
    rec["check_calls"] = check_calls()
    for fam in a.sets.split(","):
        if time.time() - t00 > a.budget: log("budget spent before", fam); break
        shapes = SETS[fam]
        for (K, N) in shapes:
            key = f"{K}x{N}"
            if key in rec["shapes"]: continue
            L, Ls, Ws = shape_case(K, N)
            per = {}
            for m in ms:
                x = torch.randn(m, K, device="cuda", dtype=torch.float16)
                ref = G.ref_gemm(x, **args_of(L, False))
                r = dict(fp16=fp16_us(x, Ws))
                cands = [(nm, c) for nm, c, why in G.kernel_candidates(m, K, N) if c is not None]
                rule = cands[0][1]
                before = next(c for nm, c in cands if nm != "tc")
                vs = dict(rule=rule, before=before)
                tcr = G._tc_rule(m, K, N, G._sms("cuda"))[0]
                if m > 1 and G.tc_why_not(m, K, N, 4, False, 128, torch.float16, "cuda") is None:
                    tcr = tcr or TCDecodeConfig(split_k=max(1, min(K // 128, round(32 * 132 / (N // 32)), 128 // m)))
                    vs["tc"] = tcr
                    vs["tc_cap256"] = tcr._replace(split_k=max(1, min(K // 128, round(32 * 132 / (N // 32)), 256 // m)))
                rec["configs"][f"{key}/{m}"] = {k: [type(c).__name__, list(c)] for k, c in vs.items()}
                with G.settled_weights():
                    for tag, cfg in vs.items():
                        y = G.gptq_gemm(x, config=cfg, **args_of(L, False)); err = rel(y, ref)
                        if not err <= 2e-3: bad.append((key, m, tag, err)); log("  FAIL", key, m, tag, err); continue
                        r[tag] = safe(graph_time, [lambda A=A, c=cfg: G.gptq_gemm(x, config=c, **args_of(A, False)) for A in Ls]) * 1e3
                for t in ("tc", "tc_cap256"): r.setdefault(t, r["rule"])
                per[m] = r
                log(f"{fam:12s} {key:12s} m={m} " + "  ".join(f"{k} {v:.2f}" for k, v in r.items()) + f"  [{type(rule).__name__}]")
            rec["shapes"][key] = per
            del Ls, Ws; torch.cuda.empty_cache()
        sums = {}
        for m in ms:
            tot = family_totals(rec["shapes"], shapes, m, lambda k, v: v)
            sums[m] = dict(us=tot, x_fp16={k: tot["fp16"] / v for k, v in tot.items() if k != "fp16"})
            log(f"  {fam} m={m} x fp16: " + "  ".join(f"{k} {v:.2f}" for k, v in sums[m]["x_fp16"].items()))
        rec["sets"][fam] = sums
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "tc_sweep.json"), "w") as f: json.dump(dict(rec, failures=bad), f, indent=1)
    log("failures:", bad, f"[{time.time() - t00:.0f} s]")


if __name__ == "__main__": main()
