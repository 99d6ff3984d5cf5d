"""Kernel exploration on the lent GPU: new decode (CUDA-core) and plane-dot (tensor-core) kernels, checked against the
float64 reference, then timed with CUDA graphs on the Llama-2-7B set next to fp16 torch.matmul and the current kernel.

    PYTHONPATH=. python3 kernels/explore.py --out $OUT [--quick]

Kinds (kernels/RESULTS.md, "What was tried"):
  gv  - the library's CUDA-core decode kernel (`_gptq_gemv_kernel`), swept over its configs. Its four earlier
        versions, timed here before one went into nbs/20_kernels.ipynb, are in this file's git history (53ba69e..6d8ec4f).
  pl  - tensor cores without the [BK/8, 8, BN] -> [BK, BN] reshape: one dot per bit plane j over rows k0 + 8r + j;
        SWAP computes W^T x^T so the dequantized weights are the A operand. Never faster than the library's kernel.
"""
import argparse, json, os, sys, time, math, itertools, datetime
import torch
import triton
import triton.language as tl

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gptq_nb.kernels import gemm as G
from gptq_nb.kernels.gemm import _field, _split_store
import bench   # kernels/bench.py: the timing, checking and compiling helpers both scripts use

dev = "cuda" if torch.cuda.is_available() else "cpu"


@triton.jit(do_not_specialize=["M"])
def pl_kernel(x_ptr, qw_ptr, qz_ptr, s_ptr, out_ptr, ws_ptr, lock_ptr, M, N, K, stride_xm, stride_z, k_per_split,
              BITS: tl.constexpr, GROUP: tl.constexpr, ZOFF: tl.constexpr, SPLIT: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, WPI: tl.constexpr, SWAP: tl.constexpr, RED: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_k = tl.program_id(2)
    PER: tl.constexpr = 32 // BITS
    ROWS: tl.constexpr = WPI * PER
    MASK: tl.constexpr = (1 << BITS) - 1
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    n_mask = offs_n < N
    m_mask = offs_m < M
    offs_r = tl.arange(0, WPI)
    if SWAP:
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_lo = pid_k * k_per_split
    for k0 in range(k_lo, k_lo + k_per_split, ROWS):
        wr = k0 // PER + offs_r
        w = tl.load(qw_ptr + wr[:, None] * N + offs_n[None, :], mask=(wr[:, None] * PER < K) & n_mask[None, :], other=0)
        grp = k0 // GROUP
        g_mask = n_mask & (k0 < K)
        z = _field(qz_ptr + grp * stride_z, offs_n, g_mask, 1, BITS) + ZOFF
        s = tl.load(s_ptr + grp * N + offs_n, mask=g_mask, other=0.0).to(tl.float32)
        zf = (z + 1024).to(tl.float16)
        if SWAP:
            t = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
        else:
            t = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for j in tl.static_range(PER):
            q = (w >> (j * BITS)) & MASK
            wq = (q | 0x6400).to(tl.int16).to(tl.float16, bitcast=True) - zf[None, :]   # exactly q - z
            kj = k0 + offs_r * PER + j
            xj = tl.load(x_ptr + offs_m[:, None] * stride_xm + kj[None, :], mask=m_mask[:, None] & (kj < K)[None, :],
                         other=0.0)
            if SWAP:
                t = tl.dot(tl.trans(wq), tl.trans(xj), t)
            else:
                t = tl.dot(xj, wq, t)
        if SWAP:
            acc += t * s[:, None]
        else:
            acc += t * s[None, :]
    if SWAP:
        acc = tl.trans(acc)
    _split_store(acc, out_ptr, ws_ptr, lock_ptr, out_ptr, offs_m, offs_n, M, N, N, pid_m * tl.num_programs(0) + pid_n,
                 tl.num_programs(2), pid_k, SPLIT, False, RED)


def run(kind, x2, L, cfg, out=None):
    """Launch variant `kind` on x2 [M, K] and layer dict L (natural group order): 'gv' is the library's decode kernel
    (`gptq_gemm` with a gemv config; its earlier versions are in this file's git history), 'pl' the bit-plane kernel
    above. `out`, when given, receives the result (the correctness check poisons it first)."""
    if kind == "gv":
        y = G.gptq_gemm(x2, L["qweight"], L["qzeros"], L["scales"], None, L["bits"], L["group_size"],
                        L["checkpoint_format"], None, dict(cfg, mode="gemv"))
        if out is not None: out.copy_(y)
        return y
    M, K = x2.shape
    N = L["scales"].shape[1]
    bits, gs = L["bits"], L["group_size"]
    GROUP = 1 << 30 if gs == -1 else gs
    rows = cfg["wpi"] * (32 // bits)
    if GROUP % rows: raise ValueError(f"a tile of {rows} rows must divide the group size {GROUP}")
    kps = -(-(-(-K // cfg.get("sk", 1))) // rows) * rows
    sk = -(-K // kps)
    out = torch.empty(M, N, dtype=x2.dtype, device=x2.device) if out is None else out
    ws = torch.empty(sk, M, N, dtype=torch.float32, device=x2.device) if sk > 1 else out
    grid = (-(-N // cfg["bn"]), -(-M // cfg["bm"]), sk)
    locks = G._locks(x2.device, grid[0] * grid[1]) if sk > 1 else out
    pl_kernel[grid](x2, L["qweight"], L["qzeros"], L["scales"], out, ws, locks, M, N, K, x2.stride(0),
                    L["qzeros"].shape[1], kps, BITS=bits, GROUP=GROUP, ZOFF=1 if L["checkpoint_format"] == "gptq" else 0,
                    SPLIT=sk > 1, BLOCK_M=cfg["bm"], BLOCK_N=cfg["bn"], WPI=cfg["wpi"], SWAP=cfg.get("sw", 0),
                    RED=1, num_warps=cfg["w"], num_stages=cfg.get("s", 2))
    return out


log, rel, host_us = bench.log, bench.rel, bench.host_overhead


def graph_time(fns):
    "bench.graph_time in µs."
    return bench.graph_time(fns) * 1e3


def gv_cands(m):
    out = []
    for bn, w, wpi, pf in itertools.product((64, 128, 256, 512), (1, 2, 4), (4, 8), (0, 1)):
        cols = bn // (32 * w)
        if cols not in (2, 4, 8) or cols * wpi > 32: continue
        if m > 1 and (cols * wpi > 16): continue
        out.append(dict(bn=bn, w=w, wpi=wpi, pf=pf))
    return out


def pl_cands(m):
    out = []
    if m <= 16:
        for bn, w, s, sw in itertools.product((64, 128, 256), (4, 8), (2, 3), (0, 1)):
            if w == 8 and bn < 128: continue
            out.append(dict(bm=16, bn=bn, w=w, s=s, wpi=16, sw=sw))
    else:
        for bm, bn, w, s, sw in itertools.product((32, 64), (64, 128), (4, 8), (2, 3), (0, 1)):
            if w == 8 and bn * bm < 8192: continue
            out.append(dict(bm=bm, bn=bn, w=w, s=s, wpi=16, sw=sw))
    return out


def _warm(items):
    "Worker: compile (kind, m, cfg) items by launching each once on a small layer (fills Triton's disk cache)."
    import torch
    L = G.random_gptq(1024, 1024, device="cuda")
    for kind, m, cfg in items:
        x = torch.randn(m, 1024, device="cuda", dtype=torch.float16)
        for sk in (1, 2):
            try: run(kind, x, L, dict(cfg, sk=sk))
            except Exception as e: print("warm fail", kind, cfg, str(e)[:200], flush=True)
    torch.cuda.synchronize()
    return len(items)


def check_variant(kind, cfg, m):
    "Relative error vs float64 on fresh random layers: a big natural shape and an awkward one (odd N, K % 128 != 0)."
    errs = []
    for (K, N, fmt, sym) in ((4096, 4096, "gptq", True), (1088, 1001, "gptq_v2", False)):
        L = G.random_gptq(K, N, bits=4, group_size=128, checkpoint_format=fmt, sym=sym, device=dev,
                          seed=int(torch.randint(0, 10**6, ()).item()))
        x = torch.randn(m, K, device=dev, dtype=torch.float16)
        ref = G.ref_gemm(x, L["qweight"], L["qzeros"], L["scales"], None, 4, 128, fmt)
        y = torch.full((m, N), float("nan"), device=dev, dtype=torch.float16)
        run(kind, x, L, dict(cfg, sk=2), out=y)
        errs.append(rel(y, ref))
    return max(errs)


def safe(fn):
    try: return fn()
    except Exception as ex:
        log("   skip:", type(ex).__name__, str(ex)[:120]); torch.cuda.synchronize(); return float("inf")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--ms", default="1")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    R = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             card=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
             commit=os.environ.get("COMMIT", "?"), rows=[])
    log({k: R[k] for k in ("card", "torch", "triton", "date")})
    ms = [int(v) for v in a.ms.split(",")]
    plan = {m: ([("gv", c) for c in gv_cands(m)] if m <= 4 else []) + ([("pl", c) for c in pl_cands(m)] if m >= 4 else [])
            for m in ms}
    if a.quick: plan = {m: v[:3] for m, v in plan.items()}
    items = [(k, m, c) for m, v in plan.items() for k, c in v]
    bench.precompile(items, procs=15, worker=_warm)
    # correctness of every variant, fresh inputs
    bad = set()
    for m, v in plan.items():
        for kind, cfg in v:
            e = safe(lambda: check_variant(kind, cfg, m))
            if not e <= 2e-3:
                bad.add((m, kind, json.dumps(cfg))); log("  FAIL", m, kind, cfg, e)
    log(f"== check: {len(items)} variants, {len(bad)} failures")
    R["failures"] = [list(b) for b in bad]
    # timings: the 7B set, rotated weight copies (cold HBM), CUDA graphs
    layers = {}
    for i, (K, N) in enumerate(bench.SETS["7B"]):
        L = G.random_gptq(K, N, bits=4, group_size=128, device=dev, seed=i)
        n = int(min(32, max(1, math.ceil(4 * 60e6 / (K * N // 2)))))
        layers[(K, N)] = [dict(L, qweight=L["qweight"].clone(), qzeros=L["qzeros"].clone(), scales=L["scales"].clone())
                          for _ in range(n)]
    best = {}
    t0 = time.time()
    for m in ms:
        fp = cur = 0.0
        per = {}
        for (K, N), Ls in layers.items():
            x = torch.randn(m, K, device=dev, dtype=torch.float16)
            Ws = [torch.randn(K, N, device=dev, dtype=torch.float16) * 0.02 for _ in range(max(1, math.ceil(4 * 60e6 / (K * N * 2))))]
            f = graph_time([lambda W=W: torch.matmul(x, W) for W in Ws]); del Ws
            cfg0 = G.pick_config(m, K, N, 4, 128, dev)
            c0 = graph_time([lambda L=L: G.gptq_gemm(x, L["qweight"], L["qzeros"], L["scales"], None, 4, 128, "gptq", None, cfg0)
                             for L in Ls])
            fp += f; cur += c0
            res = []
            for kind, cfg in plan[m]:
                if (m, kind, json.dumps(cfg)) in bad: continue
                for sk in (1, 2, 4, 8, 16) + ((32, 64) if kind == "gv" else ()):
                    if K // sk < cfg["wpi"] * 8: continue
                    c = dict(cfg, sk=sk)
                    t = safe(lambda: graph_time([lambda L=L: run(kind, x, L, c) for L in Ls]))
                    res.append((t, kind, c))
                    R["rows"].append(dict(m=m, K=K, N=N, kind=kind, cfg=c, us=t))
            res.sort(key=lambda r: r[0])
            per[(K, N)] = dict(fp16=f, cur=c0, best=res[0] if res else None)
            log(f"  m={m} {K}x{N}: fp16 {f:6.1f} cur {c0:6.1f} best {res[0][0]:6.1f} {res[0][1]} {res[0][2]}  "
                f"2nd {res[1][0]:6.1f} {res[1][1]} {res[1][2]}  [{time.time() - t0:.0f}s]")
        tot = sum(p["best"][0] for p in per.values())
        best[m] = dict(fp16=fp, cur=cur, new=tot, per={f"{k[0]}x{k[1]}": dict(fp16=p["fp16"], cur=p["cur"], us=p["best"][0],
                                                                                 kind=p["best"][1], cfg=p["best"][2])
                                                           for k, p in per.items()})
        json.dump(dict(R, best=best), open(os.path.join(a.out, "explore.json"), "w"), indent=1, default=str)
    # host time of one decode call, and the thin launcher against Triton's own (must be bit-identical)
    K, N = 4096, 4096
    L = layers[(K, N)][0]
    x = torch.randn(1, K, device=dev, dtype=torch.float16)
    W = torch.randn(K, N, device=dev, dtype=torch.float16)
    call = lambda: G.gptq_gemm(x, L["qweight"], L["qzeros"], L["scales"], None, 4, 128, "gptq")
    R["host_us"] = dict(gptq_gemm=host_us(call), matmul=host_us(lambda: torch.matmul(x, W)))
    os.environ["GPTQ_NB_FAST_LAUNCH"] = "0"
    R["host_us"]["gptq_gemm_triton_launcher"] = host_us(call)
    ya = call()
    os.environ["GPTQ_NB_FAST_LAUNCH"] = "1"
    yb = call(); torch.cuda.synchronize()
    R["fast_equal"] = bool(torch.equal(ya, yb))
    log("  fast launcher bit-identical:", R["fast_equal"], "| host us per call:",
        {k: round(v, 1) for k, v in R["host_us"].items()})
    json.dump(dict(R, best=best), open(os.path.join(a.out, "explore.json"), "w"), indent=1, default=str)
    log("\n== summary (7B set, CUDA-graph GPU time, sum of 4 shapes)")
    log(f"{'m':>4} {'fp16 us':>8} {'current':>8} {'new':>8} {'fp16/new':>9} {'fp16/cur':>9}")
    for m, b in best.items():
        log(f"{m:4d} {b['fp16']:8.1f} {b['cur']:8.1f} {b['new']:8.1f} {b['fp16'] / b['new']:9.2f} {b['fp16'] / b['cur']:9.2f}")


if __name__ == "__main__":
    main()
