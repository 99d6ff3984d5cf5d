"""GPU workbench for gptq_nb.kernels.gemm: correctness sweeps, tuning sweeps, protocols S1 and S3.

Run on the lent GPU from the repo root (everything, about 15 min; the session's runs split it, kernels/RESULTS.md):
    PYTHONPATH=. python3 kernels/bench.py --check --check-gemv --tune --tune-gemv --s1 --s3 --out $OUT
Stages:
  --check  every kernel variant against the float64 torch reference on fresh random inputs: bits 2/3/4/8, gptq and
           gptq_v2 zeros, sym/asym, act-order (per-element g_idx path and prepare()'s reordering), odd N, K not a
           multiple of the group, group -1/32/128, fp16 and bf16, m from 1 to 300, split-K, bias, CUDA-graph replay.
  --tune   sweep launch configs on the S1 shapes (Llama-2-7B and -70B linear sets, 4-bit g128, m = 1, 4, 16, 64, 256),
           keep the fastest per (m, shape); writes tuned_<card>.json ({card: {"bits/m/K/N": config}}).
  --s1     protocol S1 (PROTOCOL.md): do_bench medians summed over each set, ratio to fp16 torch.matmul in the same
           process, HBM floor from a measured device-to-device copy; also the same kernels timed inside CUDA graphs
           over rotated weight copies (GPU time without host launch overhead) and the host overhead per call.
           Uses --tuned FILE (or the table just tuned).
  --check-gemv / --tune-gemv  the same for the CUDA-core decode kernel (mode="gemv"), merged into the table.
  --check-fast  --check on 4- and 3-bit only (about 3 min).   --ms 1,4  S1 on those batch rows only.
  --s3     protocol S3, end-to-end decode of a Llama-2-7B-shaped model (kernels/decode.py, writes s3_decode.json).
Timing note: --tune and the graph columns of --s1 use CUDA-graph replay; eager do_bench of a kernel this short
measures the host launch (34-85 us per gptq_gemm call on the H200 machine's host). --check is compile-bound (about
5 min on an H200).
Prints short tables last; full numbers go to --out as JSON.
"""
import argparse, json, os, sys, time, math, itertools, datetime
import torch
import triton
from triton.testing import do_bench

from gptq_nb.kernels import gemm as G

SETS = {"7B": [(4096, 12288), (4096, 4096), (4096, 22016), (11008, 4096)],
        "70B": [(8192, 10240), (8192, 8192), (8192, 57344), (28672, 8192)]}
MS = (1, 4, 16, 64, 256)
dev = "cuda"


def log(*a):
    print(*a, flush=True)


def rel(y, ref):
    y = y.double()
    if not torch.isfinite(y).all(): return float("inf")
    return ((y - ref).norm() / ref.norm()).item()


def layer(K, N, bits=4, gs=128, act_order=False, fmt="gptq", sym=False, seed=0):
    L = G.random_gptq(K, N, bits=bits, group_size=gs, act_order=act_order, checkpoint_format=fmt, sym=sym,
                      device=dev, seed=seed)
    return L


def args_of(L, g_idx=True):
    return dict(qweight=L["qweight"], qzeros=L["qzeros"], scales=L["scales"],
                g_idx=L["g_idx"] if g_idx else None, bits=L["bits"], group_size=L["group_size"],
                checkpoint_format=L["checkpoint_format"])


# ----------------------------------------------------------------------------------------------------------------- check
def check(fast=False):
    "fast=True: 4- and 3-bit cases only (the shared split-K epilogue and the launcher), for a short GPU call."
    log("== check: kernels vs float64 reference" + (" (fast subset)" if fast else ""))
    fails, n = [], 0
    cfgs = [None,
            dict(bm=16, bn=64, bk=128, sk=4, w=4, s=3, u=1, c=1),
            dict(bm=16, bn=32, bk=64, sk=1, w=4, s=2, u=0, c=0),
            dict(bm=64, bn=128, bk=64, sk=1, w=4, s=3, u=1, c=0),
            dict(bm=32, bn=64, bk=32, sk=2, w=4, s=3, u=1, c=1),
            dict(bm=16, bn=128, bk=128, sk=4, w=4, s=3, u=2, c=1),   # codes unpacked with joins
            dict(bm=64, bn=128, bk=64, sk=2, w=4, s=3, u=2, c=3),    # fp16 W scaled before the MMA
            {"mode": "dequant"}]
    cases = []
    for bits in ((4, 3) if fast else (4, 8, 2, 3)):
        shapes = ((1088, 1001, 128), (576, 1536, 32), (576, 1536, -1), (4096, 4096, 128)) if bits == 4 else \
                 ((1088, 1001, 128), (576, 1536, -1))
        if fast: shapes = shapes[:1] + shapes[-1:]
        for (K, N, gs) in shapes:
            for fmt, ao, sym in (("gptq", False, True), ("gptq_v2", True, False), ("gptq", True, False)):
                cases.append((bits, K, N, gs, fmt, ao, sym))
    t0 = time.time()
    for ci, (bits, K, N, gs, fmt, ao, sym) in enumerate(cases):
        L = layer(K, N, bits, gs, ao, fmt, sym, seed=ci)
        bias = torch.randn(N, device=dev).half() * 0.1
        for m, dt in ((1, torch.float16), (16, torch.bfloat16), (33, torch.float16), (300, torch.float16)):
            x = torch.randn(m, K, device=dev, dtype=dt)
            b = bias.to(dt) if m in (3, 33) else None
            ref = G.ref_gemm(x, bias=b, **args_of(L))
            tol = 2e-3 if dt == torch.float16 else 6e-3
            variants = []
            for cfg in (cfgs[0], cfgs[1 + ci % 6], cfgs[7]):
                if ao:  # act-order: direct g_idx path and prepare()'s reordered path
                    variants.append(("gidx", cfg, lambda cfg=cfg: G.gptq_gemm(x, bias=b, config=cfg, **args_of(L))))
                    P = G.prepare(**args_of(L), bias=b)
                    variants.append(("prep", cfg, lambda cfg=cfg, P=P: P(x, cfg)))
                else:
                    variants.append(("plain", cfg, lambda cfg=cfg: G.gptq_gemm(x, bias=b, config=cfg, **args_of(L, g_idx=False))))
            for name, cfg, fn in variants:
                torch.full((m * N * 2 + 4096,), float("nan"), device=dev)  # poison the allocator's next block
                y = fn()
                y2 = fn()
                torch.cuda.synchronize()
                e = rel(y, ref)
                n += 1
                det = torch.equal(y, y2)
                if not (e <= tol) or not det:
                    fails.append((bits, K, N, gs, fmt, ao, sym, m, str(dt), name, cfg, e, det))
                    log("FAIL", fails[-1])
        if ci % 8 == 0: log(f"  case {ci}/{len(cases)}  {time.time() - t0:.0f}s  worst so far ok, fails={len(fails)}")
    # CUDA graph capture and replay (split-K counters must reset themselves), fused and decode kernels
    for cfg in (dict(bm=16, bn=64, bk=128, sk=8, w=4, s=3, u=1, c=1), dict(mode="gemv", bn=256, wpi=8, sk=16, w=2, pf=1)):
        n += 1
        e = graph_check(cfg)
        log(f"  cuda graph replay {cfg.get('mode', 'fused')}: rel err {e:.2e}")
        if not e <= 2e-3: fails.append(("cudagraph", cfg, e))
    log(f"== check: {n} runs, {len(fails)} failures, {time.time() - t0:.0f}s")
    return dict(runs=n, failures=[str(f) for f in fails])


def graph_check(cfg):
    L = layer(4096, 4096)
    x = torch.randn(1, 4096, device=dev, dtype=torch.float16)
    G.gptq_gemm(x, config=cfg, **args_of(L, False))   # compile and first launch outside the capture
    s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2): G.gptq_gemm(x, config=cfg, **args_of(L, False))
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        yg = G.gptq_gemm(x, config=cfg, **args_of(L, False))
    x.copy_(torch.randn_like(x))
    for _ in range(5): g.replay()
    torch.cuda.synchronize()
    return rel(yg, G.ref_gemm(x, **args_of(L, False)))


# ------------------------------------------------------------------------------------------------------------------ time
def bench(fn, fast=True):
    return do_bench(fn, warmup=3 if fast else 25, rep=15 if fast else 100, return_mode="median")


def safe_bench(fn, fast=True):
    try: return bench(fn, fast)
    except Exception as ex:  # e.g. a tile that needs more shared memory than the card has
        log("   skip:", type(ex).__name__, str(ex)[:80])
        return float("inf")


def fp16_time(x, W, Wt, fast=True):
    a = bench(lambda: torch.matmul(x, W), fast)
    b = bench(lambda: torch.nn.functional.linear(x, Wt), fast)
    return min(a, b), a, b


def small_cands():
    out = []
    for bn, bk, (w, s) in itertools.product((32, 64, 128, 256), (64, 128), ((4, 2), (4, 3), (4, 4), (8, 3))):
        if w == 8 and bn < 128: continue
        out.append(dict(bm=16, bn=bn, bk=bk, w=w, s=s))
    return out


BIG = {64: [(16, 64, 128, 4, 4), (16, 128, 128, 4, 4), (32, 64, 128, 4, 4), (32, 128, 64, 4, 4), (32, 128, 128, 4, 3),
            (64, 64, 64, 4, 4), (64, 128, 64, 4, 3), (64, 128, 64, 4, 4), (64, 128, 128, 4, 3), (64, 256, 64, 8, 3),
            (64, 128, 64, 8, 4), (32, 256, 64, 8, 3)],
       256: [(64, 128, 64, 4, 3), (64, 128, 64, 4, 4), (64, 128, 128, 4, 3), (64, 256, 64, 8, 3), (64, 256, 64, 8, 4),
             (128, 128, 64, 8, 3), (128, 128, 64, 4, 3), (128, 256, 64, 8, 3), (128, 128, 128, 8, 3), (128, 64, 64, 4, 4),
             (64, 64, 128, 4, 4), (128, 256, 32, 8, 4)]}


def big_cands(m):
    return [dict(zip(("bm", "bn", "bk", "w", "s"), t)) for t in BIG[m]]


def _warm(cfgs):
    "Worker: compile configs by running them once on a small layer with the same specialisation as the S1 shapes."
    import torch
    from gptq_nb.kernels import gemm as G
    L = G.random_gptq(256, 256, device="cuda")
    for item in cfgs:
        m, cfg = item if isinstance(item, tuple) else (16, item)
        x = torch.randn(m, 256, device="cuda", dtype=torch.float16)
        try: G.gptq_gemm(x, L["qweight"], L["qzeros"], L["scales"], None, 4, 128, "gptq", None, cfg)
        except Exception as e: print("warm fail", cfg, e, flush=True)
    torch.cuda.synchronize()
    return len(cfgs)


def precompile(cfgs, procs=14, worker=None):
    "Fill Triton's disk cache in parallel (compiles are CPU-bound and serial in one process); worker(chunk) -> count."
    import multiprocessing as mp
    t0 = time.time()
    chunks = [cfgs[i::procs] for i in range(procs)]
    with mp.get_context("spawn").Pool(procs) as pool:
        n = sum(pool.map(worker or _warm, [c for c in chunks if c]))
    log(f"  precompiled {n} configs in {time.time() - t0:.0f}s")


def copies(L, n):
    "n independent copies of a layer's tensors (rotated through so that each call reads its weights from HBM)."
    return [dict(args_of(L, False), qweight=L["qweight"].clone(), qzeros=L["qzeros"].clone(), scales=L["scales"].clone())
            for _ in range(n)]


def n_copies(nbytes, l2=60e6):
    return int(min(32, max(1, math.ceil(4 * l2 / nbytes))))


def graph_time(fns, min_calls=32):
    """GPU time per call: capture the calls (rotating over weight copies) in one CUDA graph, time its replays.
    No host launch overhead; cold weights because the rotation set is several times the L2."""
    for f in fns: f()
    torch.cuda.synchronize()
    reps = max(1, -(-min_calls // len(fns)))
    st = torch.cuda.Stream(); st.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(st):
        for f in fns: f()
    torch.cuda.current_stream().wait_stream(st)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(reps):
            for f in fns: f()
    g.replay(); torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    ts = []
    for _ in range(7):
        e0.record(); g.replay(); e1.record(); e1.synchronize()
        ts.append(e0.elapsed_time(e1) / (reps * len(fns)))
    del g
    return sorted(ts)[len(ts) // 2]


def safe_graph_time(fns):
    try: return graph_time(fns)
    except Exception as ex:
        log("   skip:", type(ex).__name__, str(ex)[:80])
        torch.cuda.synchronize()
        return float("inf")


def qbytes(K, N): return K * N // 2 + (K // 128) * N * 2.5


def checked(records, x, cfg, A, ref):
    "Does `cfg` compute x @ W within 2e-3 of the float64 reference? A tuning candidate is timed only if so."
    e = rel(G.gptq_gemm(x, config=cfg, **A), ref)
    if e <= 2e-3: return True
    log("   FAIL", tuple(x.shape), A["qweight"].shape, cfg, e)
    records.setdefault("tune_failures", []).append((tuple(x.shape), tuple(A["qweight"].shape), cfg, e))
    return False


def unpack_cvt(m):
    "(u, c) pairs the sweep tries: the winners of the H200's sweeps (u=1 c=0 at m <= 16, u=2 c=3 and u=1 c=1 at m=64)."
    return ((1, 0), (1, 1), (2, 1)) if m <= 16 else ((1, 1), (1, 3), (2, 3))


def tune(records):
    log("== tune (CUDA-graph timing, rotating weight copies)")
    t0 = time.time()
    card = torch.cuda.get_device_name()
    table, alltimes = {}, []
    jobs = []
    for m in MS:
        for cand in (small_cands() if m <= 16 else big_cands(m)):
            for u, c in unpack_cvt(m):
                for sk in (1, 2):
                    jobs.append(dict(cand, u=u, c=c, sk=sk))
    uniq = {json.dumps(j, sort_keys=True): j for j in jobs}
    precompile(list(uniq.values()))
    for m in MS:
        cands = [dict(cd, u=u, c=c) for cd in (small_cands() if m <= 16 else big_cands(m)) for u, c in unpack_cvt(m)]
        sks = (2, 4, 8, 16) if m <= 16 else (1, 2)
        scores = {}
        for setname in ("7B", "70B"):
            if setname == "70B":  # prune: the 10 best tile configs on the 7B set
                ranked = sorted(scores, key=scores.get)[:10]
                cands_here = [json.loads(k) for k in ranked]
            else:
                cands_here = cands
            for i, sh in enumerate(SETS[setname]):
                K, N = sh
                Ls = copies(layer(K, N, seed=i), n_copies(qbytes(K, N)))
                x = torch.randn(m, K, device=dev, dtype=torch.float16)
                ref = G.ref_gemm(x, **Ls[0])
                prev = G.pick_config(m, K, N, 4, 128, dev)
                best = (safe_graph_time([lambda A=A: G.gptq_gemm(x, config=prev, **A) for A in Ls]), prev)
                t_prev = best[0]
                for cand in cands_here:
                    key = json.dumps(cand, sort_keys=True)
                    cbest = float("inf")
                    for sk in sks:
                        if sk > 1 and K // sk < cand["bk"]: continue
                        cfg = dict(cand, sk=sk)
                        if not checked(records, x, cfg, Ls[0], ref): continue
                        t = safe_graph_time([lambda A=A, cfg=cfg: G.gptq_gemm(x, config=cfg, **A) for A in Ls])
                        alltimes.append(dict(m=m, K=K, N=N, cfg=cfg, ms=t))
                        cbest = min(cbest, t)
                        if t < best[0]: best = (t, cfg)
                    if setname == "7B": scores[key] = scores.get(key, 0) + cbest
                if m >= 16:
                    t = safe_graph_time([lambda A=A: G.gptq_gemm(x, config={"mode": "dequant"}, **A) for A in Ls[:2]])
                    alltimes.append(dict(m=m, K=K, N=N, cfg={"mode": "dequant"}, ms=t))
                    if t < best[0]: best = (t, {"mode": "dequant"})
                table[f"4/{m}/{K}/{N}"] = best[1]
                del Ls, ref
                log(f"  m={m:3d} {K}x{N}: was {t_prev * 1e3:8.1f} us, best {best[0] * 1e3:8.1f} us  {best[1]}   [{time.time() - t0:.0f}s]")
    records["tune_all"] = alltimes
    return {card: table}


def gemv_cands(m=1):
    """Decode-kernel configs: the shapes that won earlier sweeps (2-8 columns, 4-8 words per thread), fp32 or half2 math;
    for 3-4 rows also 2 words per thread (96 registers instead of 144: more warps per SM)."""
    out = []
    tiles = ((128, 1, 8), (512, 4, 8), (512, 4, 4), (64, 1, 8), (512, 2, 4), (256, 1, 8), (256, 2, 8), (128, 1, 4))
    if m > 2: tiles += ((128, 1, 2), (256, 2, 2), (512, 4, 2), (64, 1, 4))
    for bn, w, wpi in tiles:
        for h2 in (0, 1):
            out.append(dict(mode="gemv", bn=bn, wpi=wpi, w=w, pf=1, h2=h2))
    return out


def check_gemv():
    "The decode kernel vs float64: bits 2/4/8, gptq and gptq_v2 (act-order via prepare), odd N, 1-4 rows, fp16/bf16, bias."
    log("== check gemv")
    fails, n = [], 0
    t0 = time.time()
    for bits in (4, 2, 8):
        shapes = ((1088, 1001, 128), (576, 1536, 32), (576, 1536, -1)) if bits == 4 else ((1088, 1001, 128),)
        for (K, N, gs) in shapes:
            for fmt, ao in (("gptq", False), ("gptq_v2", True)):
                L = layer(K, N, bits, gs, ao, fmt, seed=n)
                P = G.prepare(**args_of(L))
                for m, dt in ((1, torch.float16), (2, torch.float16), (3, torch.bfloat16), (4, torch.float16)):
                    x = torch.randn(m, K, device=dev, dtype=dt)
                    b = (torch.randn(N, device=dev) * 0.1).to(dt) if m == 3 else None
                    ref = G.ref_gemm(x, bias=b, **args_of(L))
                    P.bias = b
                    wpi = 4 if (gs == 32 and bits == 4) else (2 if gs == 32 else 8)
                    for cfg in (dict(mode="gemv", bn=256, wpi=wpi, sk=1, w=2, pf=0, h2=0), dict(mode="gemv", bn=64, wpi=wpi, sk=3, w=1, pf=1, h2=1), None):
                        torch.full((m * N * 2 + 4096,), float("nan"), device=dev)
                        y = P(x, cfg); y2 = P(x, cfg); torch.cuda.synchronize()
                        e = rel(y, ref); n += 1
                        tol = 2e-3 if dt == torch.float16 else 6e-3
                        if not (e <= tol and torch.equal(y, y2)):
                            fails.append((bits, K, N, gs, fmt, ao, m, str(dt), cfg, e)); log("FAIL", fails[-1])
        log(f"  bits {bits} done  {time.time() - t0:.0f}s")
    log(f"== check gemv: {n} runs, {len(fails)} failures")
    return dict(runs=n, failures=[str(f) for f in fails])


def tune_gemv(records, table, ms=(1,)):
    log("== tune gemv (CUDA-graph timing)")
    t0 = time.time()
    precompile([(m, dict(c, sk=sk)) for m in ms for c in gemv_cands(m) for sk in (1, 2)])
    alltimes = []
    for m in ms:
        cands = gemv_cands(m)
        for setname in ("7B", "70B"):
            for i, (K, N) in enumerate(SETS[setname]):
                Ls = copies(layer(K, N, seed=i), n_copies(qbytes(K, N)))
                x = torch.randn(m, K, device=dev, dtype=torch.float16)
                ref = G.ref_gemm(x, **Ls[0])
                key = f"4/{m}/{K}/{N}"
                prev = table.get(key)
                best = (safe_graph_time([lambda A=A: G.gptq_gemm(x, config=prev, **A) for A in Ls]), prev)
                t_prev = best[0]
                for cand in cands:
                    for sk in (16, 32):
                        if K // sk < cand["wpi"] * 8: continue
                        cfg = dict(cand, sk=sk)
                        if not checked(records, x, cfg, Ls[0], ref): continue
                        t = safe_graph_time([lambda A=A, cfg=cfg: G.gptq_gemm(x, config=cfg, **A) for A in Ls])
                        alltimes.append(dict(m=m, K=K, N=N, cfg=cfg, ms=t))
                        if t < best[0]: best = (t, cfg)
                table[key] = best[1]
                del Ls, ref
                log(f"  m={m} {K}x{N}: was {t_prev * 1e3:7.1f} us -> best {best[0] * 1e3:7.1f} us {best[1]}  [{time.time() - t0:.0f}s]")
    records["tune_gemv_all"] = alltimes


def host_overhead(fn, n=300):
    "Host microseconds per call, with the GPU kept busy so the queue never drains."
    for _ in range(3): fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n): fn()
    dt = (time.perf_counter() - t) / n
    torch.cuda.synchronize()
    return dt * 1e6


def s1(records, tuned):
    log("== S1")
    card = torch.cuda.get_device_name()
    a = torch.empty(1 << 30, dtype=torch.uint8, device=dev); b = torch.empty_like(a)
    t = do_bench(lambda: b.copy_(a), warmup=25, rep=200, return_mode="median")
    bw = 2 * a.numel() / (t * 1e-3)
    del a, b
    log(f"  copy bandwidth {bw / 1e12:.2f} TB/s (read+write)")
    out = dict(card=card, copy_bw=bw, sets={})
    for setname, shapes in SETS.items():
        rows = {}
        layers = [layer(*sh, seed=i) for i, sh in enumerate(shapes)]
        wbytes = sum(L["qweight"].numel() * 4 + L["scales"].numel() * 2 + L["qzeros"].numel() * 4 for L in layers)
        fbytes = sum(K * N * 2 for K, N in shapes)
        per_shape = {}
        for m in MS:
            r = dict(fp16=0.0, fp16_matmul=0.0, fp16_linear=0.0, gptq=0.0, fp16_graph=0.0, gptq_graph=0.0, dequant_graph=0.0)
            for (K, N), L in zip(shapes, layers):
                x = torch.randn(m, K, device=dev, dtype=torch.float16)
                cfg = G.pick_config(m, K, N, 4, 128, dev)
                W = torch.randn(K, N, device=dev, dtype=torch.float16) * 0.02
                Wt = W.t().contiguous()
                f, fa, fb = fp16_time(x, W, Wt, fast=False)
                del Wt
                Ws = [W] + [W.clone() for _ in range(n_copies(K * N * 2) - 1)]
                fg = graph_time([lambda W=W: torch.matmul(x, W) for W in Ws])
                del Ws, W
                Ls = copies(L, n_copies(qbytes(K, N)))
                q = bench(lambda: G.gptq_gemm(x, config=cfg, **args_of(L, False)), fast=False)
                qg = graph_time([lambda A=A: G.gptq_gemm(x, config=cfg, **A) for A in Ls])
                dg = graph_time([lambda A=A: G.gptq_gemm(x, config={"mode": "dequant"}, **A) for A in Ls[:2]])
                del Ls
                for k, v in zip(("fp16", "fp16_matmul", "fp16_linear", "gptq", "fp16_graph", "gptq_graph", "dequant_graph"),
                                (f, fa, fb, q, fg, qg, dg)):
                    r[k] += v
                per_shape[f"{m}/{K}/{N}"] = dict(fp16=f, gptq=q, fp16_graph=fg, gptq_graph=qg, dequant_graph=dg, cfg=cfg)
            r["ratio"] = r["fp16"] / r["gptq"]
            r["ratio_graph"] = r["fp16_graph"] / r["gptq_graph"]
            rows[m] = r
            log(f"  {setname} m={m:3d}: do_bench fp16 {r['fp16'] * 1e3:7.1f} gptq {r['gptq'] * 1e3:7.1f} us ({r['ratio']:4.2f}x) | "
                f"graph fp16 {r['fp16_graph'] * 1e3:7.1f} gptq {r['gptq_graph'] * 1e3:7.1f} us ({r['ratio_graph']:4.2f}x) "
                f"dequant+cuBLAS {r['dequant_graph'] * 1e3:7.1f}")
        out["sets"][setname] = dict(rows=rows, per_shape=per_shape, weight_bytes=wbytes, fp16_bytes=fbytes,
                                    floor_ms=wbytes / bw * 1e3, fp16_floor_ms=fbytes / bw * 1e3)
        log(f"  {setname}: HBM floor 4-bit {wbytes / bw * 1e6:.1f} us, fp16 {fbytes / bw * 1e6:.1f} us")
    # host launch overhead per call (what an eager decode loop pays; CUDA graphs remove it)
    K, N = 4096, 4096
    L = layers[1] if False else layer(K, N)
    x = torch.randn(1, K, device=dev, dtype=torch.float16)
    W = torch.randn(K, N, device=dev, dtype=torch.float16)
    cfg = G.pick_config(1, K, N, 4, 128, dev)
    A = args_of(L, False)
    out["host_us"] = dict(gptq_gemm=host_overhead(lambda: G.gptq_gemm(x, config=cfg, **A)),
                          matmul=host_overhead(lambda: torch.matmul(x, W)))
    log(f"  host overhead per call: gptq_gemm {out['host_us']['gptq_gemm']:.1f} us, torch.matmul {out['host_us']['matmul']:.1f} us")
    records["s1"] = out
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--check-fast", action="store_true")
    ap.add_argument("--profile-one", action="store_true", help="run the tuned kernels on 4096x22016 (for ncu)")
    ap.add_argument("--profile-ms", default="1", help="batch rows --profile-one runs, e.g. 1,4,16")
    ap.add_argument("--tune", action="store_true")
    ap.add_argument("--s1", action="store_true")
    ap.add_argument("--check-gemv", action="store_true")
    ap.add_argument("--tune-gemv", action="store_true")
    ap.add_argument("--tuned", default=None)
    ap.add_argument("--gemv-ms", default="1", help="batch rows --tune-gemv tunes, e.g. 1,4")
    ap.add_argument("--ms", default=None, help="S1 batch rows to time, e.g. 1,4 (default: all of PROTOCOL's)")
    ap.add_argument("--s3", action="store_true", help="protocol S3 (end-to-end decode): runs kernels/decode.py")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    a = ap.parse_args()
    records = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), card=torch.cuda.get_device_name(),
                   torch=torch.__version__, triton=triton.__version__, commit=os.environ.get("COMMIT", "?"))
    log(records)
    os.makedirs(a.out, exist_ok=True)
    slug = torch.cuda.get_device_name().replace(" ", "_")

    def save():
        json.dump(records, open(os.path.join(a.out, "bench_records.json"), "w"), indent=1, default=str)
    try:
        if a.profile_one:   # the tuned kernel for each --profile-ms row count on 4096x22016, 3 calls each (for ncu)
            L = layer(4096, 22016)
            for m in (int(v) for v in a.profile_ms.split(",")):
                x = torch.randn(m, 4096, device=dev, dtype=torch.float16)
                for _ in range(3): G.gptq_gemm(x, **args_of(L, False))
            torch.cuda.synchronize(); return
        if a.check: records["check"] = check(); save()
        if a.check_fast: records["check"] = check(fast=True); save()
        if a.tuned: G.load_tuning(a.tuned)
        if a.tune:
            t = tune(records)
            json.dump(t, open(os.path.join(a.out, f"tuned_{slug}.json"), "w"), indent=1)
            G.load_tuning(t); save()
        if a.check_gemv: records["check_gemv"] = check_gemv(); save()
        if a.tune_gemv:
            card = torch.cuda.get_device_name()
            table = G.TUNED.setdefault(card, {})
            tune_gemv(records, table, tuple(int(v) for v in a.gemv_ms.split(",")))
            json.dump({card: table}, open(os.path.join(a.out, f"tuned_{slug}.json"), "w"), indent=1)
            save()
        if a.ms: globals()["MS"] = tuple(int(v) for v in a.ms.split(","))
        if a.s1: s1(records, G.TUNED); save()
        if a.s3:   # its own process: a 7B model's memory is given back when it ends
            import subprocess
            cmd = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "decode.py"), "--out", a.out]
            if a.tuned: cmd += ["--tuned", a.tuned]
            records["s3_returncode"] = subprocess.run(cmd).returncode
    finally:
        save()


if __name__ == "__main__":
    main()
