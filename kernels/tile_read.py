"""How fast can packed 4-bit weights be *read* in the decode kernel's tile pattern, and does the layout matter? (issue 10)

Run on the lent GPU from the repo root:  PYTHONPATH=. python3 kernels/tile_read.py --out $OUT

The decode kernel reached 22-40% of DRAM bandwidth at m = 1 on 7-8B layers (ncu, session 9), and neither a second
tile in flight nor a register cap helped (decode_sweep.py). Its program reads, per step, R word rows of BN columns of
the GPTQ `qweight` [K/8, N]: R runs of 4·BN bytes, each N·4 bytes from the next. This probe does only that reading
(each word xor-folded into a per-column int32, one store per program) for R, BN, warps and split-K, on the GPTQ
layout and on a tile-contiguous one (each program's K-slice of its columns one run of bytes: what a load-time repack
would give), graph-timed over copies several times the L2, beside fp16's GEMV on the same K×N. Prints GB/s.
"""
import argparse, datetime, json, os, subprocess, time
import torch
import triton
import triton.language as tl
from kernels.bench import graph_time, n_copies, log, safe


@triton.jit
def _read(w_ptr, out_ptr, N, KW, kw_split, TILED: tl.constexpr, R: tl.constexpr, BN: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_r = tl.arange(0, R)
    lo = pid_k * kw_split
    hi = tl.minimum(lo + kw_split, KW)
    acc = tl.zeros((R, BN), dtype=tl.int32)
    if TILED:   # [N/BN, KW, BN]: a program's rows of its columns are one contiguous run
        base = w_ptr + pid_n * KW * BN + offs_r[:, None] * BN + tl.arange(0, BN)[None, :]
        step = R * BN
    else:       # GPTQ [KW, N]
        base = w_ptr + offs_r[:, None] * N + offs_n[None, :]
        step = R * N
    p = base + lo * (BN if TILED else N)
    nxt = tl.load(p)
    for k in range(lo + R, hi, R):
        p += step
        w = nxt
        nxt = tl.load(p)
        acc ^= w
    acc ^= nxt
    tl.store(out_ptr + pid_k * N + offs_n, tl.xor_sum(acc, axis=0))


def main():
    ap = argparse.ArgumentParser(); ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--budget", type=float, default=150)
    a = ap.parse_args()
    t00 = time.time()
    rec = dict(date=str(datetime.date.today()), card=torch.cuda.get_device_name(), commit=os.environ.get("COMMIT") or subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(), shapes={})
    for (K, N) in ((4096, 12288), (4096, 4096), (11008, 4096), (8192, 57344)):
        KW = K // 8
        nb = KW * N * 4
        Wg = [torch.randint(-2**31, 2**31 - 1, (KW, N), dtype=torch.int32, device="cuda") for _ in range(n_copies(nb))]
        x = torch.randn(1, K, device="cuda", dtype=torch.float16)
        Wh = [torch.randn(K, N, device="cuda", dtype=torch.float16) for _ in range(n_copies(K * N * 2))]
        r = dict(fp16_us=safe(graph_time, [lambda w=w: torch.matmul(x, w) for w in Wh]) * 1e3)
        r["fp16_GBps"] = K * N * 2 / r["fp16_us"] / 1e3
        del Wh
        log(f"{K}x{N}: fp16 GEMV {r['fp16_us']:.2f} us = {r['fp16_GBps']:.0f} GB/s; 4-bit floor at that rate {r['fp16_us'] / 4:.2f} us")
        for tiled in (0, 1):
            for R in (8, 16):
                for BN in (64, 128, 256, 512):
                    if N % BN: continue
                    Wt = [w.view(KW, N // BN, BN).permute(1, 0, 2).contiguous() for w in Wg] if tiled else Wg
                    for warps in (1, 2, 4):
                        if BN < 32 * warps: continue
                        for target in (2048, 4096, 8192):
                            if time.time() - t00 > a.budget: break
                            tiles = N // BN
                            sk = max(1, min(KW // R, 1 << max(0, (target // tiles).bit_length() - 1)))
                            kws = -(-KW // sk) // R * R
                            if kws == 0 or KW % kws: continue
                            sk = KW // kws
                            out = torch.empty(sk, N, dtype=torch.int32, device="cuda")
                            grid = (tiles, sk)
                            fns = [lambda w=w: _read[grid](w, out, N, KW, kws, TILED=tiled, R=R, BN=BN, num_warps=warps) for w in Wt]
                            us = safe(graph_time, fns) * 1e3
                            tag = f"{'tiled' if tiled else 'gptq'} R={R} BN={BN} w={warps} sk={sk}"
                            r[tag] = dict(us=us, GBps=nb / us / 1e3, programs=tiles * sk)
                    del Wt
        best = sorted(((v["us"], k) for k, v in r.items() if isinstance(v, dict)))[:8]
        for lay in ("gptq", "tiled"):
            b = min((v["us"], k) for k, v in r.items() if isinstance(v, dict) and k.startswith(lay))
            log(f"  best {lay}: {b[1]} {b[0]:.2f} us = {nb / b[0] / 1e3:.0f} GB/s (x fp16 {r['fp16_us'] / b[0]:.2f})")
        for us, k in best: log(f"    {k}: {us:.2f} us {nb / us / 1e3:.0f} GB/s")
        rec["shapes"][f"{K}x{N}"] = r
        del Wg; torch.cuda.empty_cache()
        os.makedirs(a.out, exist_ok=True)
        json.dump(rec, open(os.path.join(a.out, "tile_read.json"), "w"), indent=1)
    log(f"[{time.time() - t00:.0f} s]")


if __name__ == "__main__": main()
