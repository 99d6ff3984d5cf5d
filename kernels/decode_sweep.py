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
import argparse, os
from kernels.bench import config_sweep, results_header
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
    rec = results_header(pdl_ok=G._pdl_ok(), shapes={}, sets={}, configs={})
    # a variant that can't differ on a shape (or failed: see failures) counts as the rule there
    config_sweep("decode_sweep.json", {f: SETS[f] for f in a.sets.split(",")}, [int(v) for v in a.ms.split(",")],
                 lambda m, K, N: variants(G.pick_config(m, K, N), K, N, m), rec, [], a.out, a.budget, fill=NAMES)


if __name__ == "__main__": main()
