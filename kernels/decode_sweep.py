"""The decode kernel's launch config against one-change variants of it, on many models' shapes (issue 10).

Run on the lent GPU from the repo root:  PYTHONPATH=. python3 kernels/decode_sweep.py --out $OUT [--ms 1,2,4]

For every layer shape of six families (q/k/v and gate/up merged, as `generate` runs them) and each m: the rule's
`DecodeConfig` (`pick_config`), the same without pairing one row's word rows (`pair_rows=False`), without prefetch,
with half / twice the splits, and for one-warp programs 128 columns a warp (4 a thread: the layout Triton gives the
1-D scale and zero loads, so no shuffles a step) at 8 and 4 word rows. Each inside `settled_weights` (PDL, as the
decode step runs them), checked against float64, then graph-timed back to back (`bench.graph_time`) beside fp16
(faster of matmul / F.linear). A variant that can't differ on a shape counts as the rule there. Writes
decode_sweep.json; `kernels/RESULTS.md` (session 10) has the earlier variants (two tiles in flight, a register cap,
side prefetch, late row sums) and why they were dropped.
"""
import argparse, json, os, time
import torch
from kernels.bench import graph_time, rel, safe, log, args_of, family_totals, shape_case, fp16_us, results_header
from kernels.gemv_reduce import SETS
from gptq_nb.kernels import gemm as G
from gptq_nb.kernels.gemv import DecodeConfig


def _sk(K, N, bn, wpi, target=4096):
    "The rule's split count for one-warp programs of bn columns and wpi word rows (23_kernel_dispatch `_decode_rule`)."
    tiles = -(-N // bn)
    return max(1, min(32, 1 << max(0, (target // tiles).bit_length() - 1), 1 << max(0, (K // (wpi * 8)).bit_length() - 1)))


def variants(rule: DecodeConfig, K: int, N: int, m: int, group: int = 128):
    "name -> DecodeConfig, each one change from the rule's (those that can't differ on this shape left out)."
    v = dict(rule=rule, unpaired=rule._replace(pair_rows=False), pf0=rule._replace(prefetch=0))
    if rule.warps == 1 and rule.block_n < 128 and m <= 2:   # 128 columns a warp: 4 a thread, the layout of the 1-D loads
        for wpi in (8, 4):
            c = rule._replace(block_n=128, words_per_thread=wpi, split_k=_sk(K, N, 128, wpi))
            v[f"bn128_wpi{wpi}"] = c
            if c.split_k > 1: v[f"bn128_wpi{wpi}_split/2"] = c._replace(split_k=c.split_k // 2)
    if rule.split_k > 1: v["split/2"] = rule._replace(split_k=rule.split_k // 2)
    if rule.split_k < 32 and K // (rule.split_k * 2) >= rule.words_per_thread * 8 * 2: v["split*2"] = rule._replace(split_k=rule.split_k * 2)
    return v


NAMES = ("rule", "unpaired", "pf0", "split/2", "split*2", "bn128_wpi8", "bn128_wpi8_split/2", "bn128_wpi4", "bn128_wpi4_split/2")


def main():
    ap = argparse.ArgumentParser(); ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--ms", default="1,2,4"); ap.add_argument("--budget", type=float, default=300)
    ap.add_argument("--sets", default=",".join(SETS))
    a = ap.parse_args()
    ms = [int(v) for v in a.ms.split(",")]
    t00 = time.time()
    rec = results_header(pdl_ok=G._pdl_ok(), shapes={}, sets={}, configs={})
    bad = []
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
                rule = G.pick_config(m, K, N)
                rec["configs"][f"{key}/{m}"] = rule._asdict()
                with G.settled_weights():
                    for tag, cfg in variants(rule, K, N, m).items():
                        try:
                            y = G.gptq_gemm(x, config=cfg, **args_of(Ls[0], False)); err = rel(y, ref)
                        except Exception as ex:
                            log("   ", key, m, tag, "can't run:", type(ex).__name__, str(ex)[:100]); continue
                        if not err <= 2e-3: bad.append((key, m, tag, err)); log("  FAIL", key, m, tag, err); continue
                        r[tag] = safe(graph_time, [lambda A=A, c=cfg: G.gptq_gemm(x, config=c, **args_of(A, False)) for A in Ls]) * 1e3
                for t in NAMES: r.setdefault(t, r["rule"])   # a variant that can't differ here (or failed: see failures) counts as the rule
                per[m] = r
                log(f"{fam:12s} {key:12s} m={m} " + "  ".join(f"{k} {v:.2f}" for k, v in r.items()))
            rec["shapes"][key] = per
            del Ls, Ws; torch.cuda.empty_cache()
        sums = {}
        for m in ms:
            tot = family_totals(rec["shapes"], shapes, m, lambda k, v: v)
            sums[m] = dict(us=tot, x_fp16={k: tot["fp16"] / v for k, v in tot.items() if k != "fp16"})
            log(f"  {fam} m={m} x fp16: " + "  ".join(f"{k} {v:.2f}" for k, v in sums[m]["x_fp16"].items()))
        rec["sets"][fam] = sums
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "decode_sweep.json"), "w") as f: json.dump(dict(rec, failures=bad), f, indent=1)
    log("failures:", bad, f"[{time.time() - t00:.0f} s]")


if __name__ == "__main__": main()
