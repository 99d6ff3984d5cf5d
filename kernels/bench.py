"""GPU workbench for gptq_nb's kernels: correctness sweeps, the rule against a per-shape sweep, protocol S1.

Run on the lent GPU from the repo root (wheels for GemLite in .whl, see kernels/RESULTS.md):
    PYTHONPATH=. python3 kernels/bench.py --check --sweep --s1 --out $OUT
Stages:
  --check   every kernel variant against the float64 torch reference on fresh random inputs: bits 2/3/4/8, gptq and
            gptq_v2 zeros, sym/asym, act-order (per-element g_idx path and prepare()'s reordering), odd N, K not a
            multiple of the group, group -1/32/128, fp16 and bf16, m from 1 to 300, split-K, bias, CUDA-graph replay;
            the decode kernel's 1-4 rows; QuantLinear's cached eager calls (direct launcher) and their capture.
            --check-fast: 4- and 3-bit only, and no separate decode-kernel sweep.
  --sweep   on every distinct layer shape of FAMILIES, m = 1, 4, 16, 64: the rule's config against a grid of
            candidates (each checked against float64 before it is timed), CUDA-graph timing; the gap rule / best.
  --s1      protocol S1 (PROTOCOL.md) on every family of FAMILIES: fp16 (best of torch.matmul and F.linear),
            gptq_nb (the rule, as QuantLinear runs it), torch's tinygemm (_weight_int4pack_mm, bf16) and GemLite
            (A16Wn 4-bit g128, fp16; its own autotune) at m = 1..256, graph and eager timing, the HBM floor; host
            time per call with the GPU kept busy.
Prints short tables last; full numbers go to --out/bench_records.json.
"""
import argparse, json, os, sys, time, math, itertools, datetime, traceback, signal
import torch
import torch.nn.functional as F
import triton

from gptq_nb.kernels import gemm as G
from gptq_nb.kernels.gemm import DecodeConfig, MMAConfig, DequantConfig
from gptq_nb.qlinear import QuantLinear

# One decoder layer's linears as transformers runs them, (K in, N out) with multiplicity; the first two are
# protocol S1's merged sets. Public configs: hidden / intermediate / heads / kv-heads / head dim.
FAMILIES = {
    "Llama-2-7B (S1, merged qkv, gate_up)": [(4096, 12288), (4096, 4096), (4096, 22016), (11008, 4096)],
    "Llama-3-8B / Mistral-7B (GQA 32/8)": [(4096, 4096), (4096, 1024), (4096, 1024), (4096, 4096), (4096, 14336), (4096, 14336), (14336, 4096)],
    "Qwen2.5-7B (GQA 28/4, hidden 3584)": [(3584, 3584), (3584, 512), (3584, 512), (3584, 3584), (3584, 18944), (3584, 18944), (18944, 3584)],
    "Llama-2-70B (S1, merged qkv, gate_up)": [(8192, 10240), (8192, 8192), (8192, 57344), (28672, 8192)],
    "Llama-3.2-1B (GQA 32/8)": [(2048, 2048), (2048, 512), (2048, 512), (2048, 2048), (2048, 8192), (2048, 8192), (8192, 2048)],
    "Phi-3-mini (fused qkv, gate_up; hidden 3072)": [(3072, 9216), (3072, 3072), (3072, 16384), (8192, 3072)],
    "Gemma-2-9B (GQA 16/8, head 256)": [(3584, 4096), (3584, 2048), (3584, 2048), (4096, 3584), (3584, 14336), (3584, 14336), (14336, 3584)],
    "Qwen2.5-14B (GQA 40/8, hidden 5120)": [(5120, 5120), (5120, 1024), (5120, 1024), (5120, 5120), (5120, 13824), (5120, 13824), (13824, 5120)],
    "Llama-3-70B (GQA 64/8)": [(8192, 8192), (8192, 1024), (8192, 1024), (8192, 8192), (8192, 28672), (8192, 28672), (28672, 8192)],
    "Llama-2-7B (MHA, unmerged)": [(4096, 4096)] * 4 + [(4096, 11008)] * 2 + [(11008, 4096)],
}
MS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
dev = "cuda"
SAVE = lambda: None
L2 = 60e6   # the H200's L2 is 50 MB (60 MB on the H100 SXM's die); rotating over 4x this reads HBM every call


def log(*a): print(*a, flush=True)


def rel(y, ref):
    y = y.double()
    if not torch.isfinite(y).all(): return float("inf")
    return ((y - ref).norm() / ref.norm()).item()


def layer(K, N, bits=4, gs=128, act_order=False, fmt="gptq", sym=False, seed=0):
    return G.random_gptq(K, N, bits=bits, group_size=gs, act_order=act_order, checkpoint_format=fmt, sym=sym,
                         device=dev, seed=seed)


def args_of(L, g_idx=True):
    return dict(qweight=L["qweight"], qzeros=L["qzeros"], scales=L["scales"], g_idx=L["g_idx"] if g_idx else None,
                bits=L["bits"], group_size=L["group_size"], checkpoint_format=L["checkpoint_format"])


def qlinear_of(L, K, N, bias=None):
    "A QuantLinear holding layer L (natural order), as from_quantized builds it."
    q = QuantLinear(K, N, L["bits"], L["group_size"], bias is not None, L["checkpoint_format"], device=dev)
    for k in ("qweight", "qzeros", "scales", "g_idx"): setattr(q, k, L[k])
    if bias is not None: q.bias = bias
    return q


# ----------------------------------------------------------------------------------------------------------------- check
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


def check(fast=False):
    "fast=True: 4- and 3-bit cases only (the shared split-K epilogue and the launcher)."
    log("== check: kernels vs float64 reference" + (" (fast subset)" if fast else ""))
    fails, n = [], 0
    cfgs = [None,
            MMAConfig(block_m=16, block_n=64, block_k=128, split_k=4),
            MMAConfig(block_m=16, block_n=32, block_k=64, stages=2, exp_convert=False),
            MMAConfig(block_m=64, block_n=128, block_k=64, exp_convert=False),
            MMAConfig(block_m=32, block_n=64, block_k=32, split_k=2),
            MMAConfig(block_m=16, block_n=128, block_k=128, split_k=4, join_unpack=True),
            MMAConfig(block_m=64, block_n=128, block_k=64, split_k=2, join_unpack=True, scale_weights=True),
            DequantConfig()]
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
        for m, dt in ((1, torch.float16), (3, torch.float16), (16, torch.bfloat16), (33, torch.float16), (300, torch.float16)):
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
                y = fn(); y2 = fn()
                torch.cuda.synchronize()
                e = rel(y, ref); n += 1
                det = torch.equal(y, y2)
                if not (e <= tol) or not det:
                    fails.append((bits, K, N, gs, fmt, ao, sym, m, str(dt), name, cfg, e, det)); log("FAIL", fails[-1])
        if ci % 8 == 0: log(f"  case {ci}/{len(cases)}  {time.time() - t0:.0f}s  fails={len(fails)}")
    for cfg in (MMAConfig(block_n=64, block_k=128, split_k=8), DecodeConfig(block_n=256, split_k=16, warps=2)):
        n += 1
        e = graph_check(cfg)
        log(f"  cuda graph replay {cfg.kind}: rel err {e:.2e}")
        if not e <= 2e-3: fails.append(("cudagraph", cfg, e))
    log(f"== check: {n} runs, {len(fails)} failures, {time.time() - t0:.0f}s")
    return dict(runs=n, failures=[str(f) for f in fails])


def check_gemv():
    "The decode kernel vs float64: bits 2/4/8, gptq and gptq_v2 (act-order via prepare), odd N, 1-4 rows, fp16/bf16, bias."
    log("== check decode kernel")
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
                    for cfg in (DecodeConfig(block_n=256, words_per_thread=wpi, warps=2, prefetch=False, packed_half=False),
                                DecodeConfig(block_n=64, words_per_thread=wpi, split_k=3, warps=1), None):
                        torch.full((m * N * 2 + 4096,), float("nan"), device=dev)
                        y = P(x, cfg); y2 = P(x, cfg); torch.cuda.synchronize()
                        e = rel(y, ref); n += 1
                        tol = 2e-3 if dt == torch.float16 else 6e-3
                        same = torch.equal(y, y2) or (cfg is None and m == 1)   # the rule's one-row atomic sums vary in the last bits
                        if not (e <= tol and same):
                            fails.append((bits, K, N, gs, fmt, ao, m, str(dt), cfg, e)); log("FAIL", fails[-1])
        log(f"  bits {bits} done  {time.time() - t0:.0f}s")
    log(f"== check decode: {n} runs, {len(fails)} failures")
    return dict(runs=n, failures=[str(f) for f in fails])


def check_calls():
    """QuantLinear's cached eager calls (the direct C launcher): every m from 1 to 16 and beyond, fp16/bf16, bias,
    act-order, split-K configs, repeated calls, new tensors swapped in, inputs off 16-byte alignment, CUDA-graph capture."""
    log("== check QuantLinear calls")
    fails, n = [], 0
    for (K, N, gs, ao, bits) in ((4096, 4096, 128, False, 4), (1088, 1000, 128, True, 4), (3584, 512, 128, False, 4),
                                 (2048, 8192, 64, False, 8), (1024, 4096, 128, True, 3)):
        L = layer(K, N, bits, gs, ao, "gptq_v2", seed=n)
        for dt in (torch.float16, torch.bfloat16):
            b = (torch.randn(N, device=dev) * 0.1).to(dt)
            q = qlinear_of(L, K, N, b)
            ref_args = args_of(L)
            for m in (1, 2, 3, 4, 8, 16, 17, 64):
                x = torch.randn(m, K, device=dev, dtype=dt)
                ref = G.ref_gemm(x, bias=b, **ref_args)
                ys = [q(x) for _ in range(3)]
                torch.cuda.synchronize()
                e = max(rel(y, ref) for y in ys); n += 1
                tol = 2e-3 if dt == torch.float16 else 6e-3
                if not e <= tol: fails.append(("call", K, N, ao, bits, m, str(dt), e)); log("FAIL", fails[-1])
                xo = torch.randn(m * K + 8, device=dev, dtype=dt)[8:].view(m, K)   # 16 bytes off: the general path
                e = rel(q(xo), G.ref_gemm(xo, bias=b, **ref_args)); n += 1
                if not e <= tol: fails.append(("offset", K, N, m, str(dt), e)); log("FAIL", fails[-1])
    # new tensors swapped into a layer are noticed; capture in a CUDA graph and replay
    L, L2_ = layer(4096, 4096, seed=1), layer(4096, 4096, seed=2)
    q = qlinear_of(L, 4096, 4096)
    x = torch.randn(1, 4096, device=dev, dtype=torch.float16)
    q(x)
    for k in ("qweight", "qzeros", "scales"): setattr(q, k, L2_[k])
    e = rel(q(x), G.ref_gemm(x, **args_of(L2_, False))); n += 1
    if not e <= 2e-3: fails.append(("swap", e)); log("FAIL", fails[-1])
    s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2): q(x)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g): yg = q(x)
    x.copy_(torch.randn_like(x)); g.replay(); torch.cuda.synchronize()
    e = rel(yg, G.ref_gemm(x, **args_of(L2_, False))); n += 1
    if not e <= 2e-3: fails.append(("graph", e)); log("FAIL", fails[-1])
    log(f"== check calls: {n} runs, {len(fails)} failures")
    return dict(runs=n, failures=[str(f) for f in fails])


# ------------------------------------------------------------------------------------------------------------------ time
def n_copies(nbytes, cap=512):
    return int(min(cap, max(1, math.ceil(4 * L2 / nbytes))))


def fp16_copies(K, N):
    "Random fp16 W [K, N] and enough copies of it that rotating through them reads HBM on every call (the fp16 reference)."
    W = torch.randn(K, N, device=dev, dtype=torch.float16) * 0.02
    return [W] + [W.clone() for _ in range(n_copies(K * N * 2) - 1)]


def shape_case(K, N):
    "A layer shape's random 4-bit layer, its rotation copies and the fp16 weights' copies (one shape of a family)."
    L = layer(K, N, seed=K + 3 * N)
    return L, copies(L, n_copies(qbytes(L))), fp16_copies(K, N)


def fp16_us(x, Ws):
    "fp16's µs a call for x @ W, graph-timed: the faster of torch.matmul on W [K, N] and F.linear on W^T [N, K] (nn.Linear's)."
    Wts = [w.t().contiguous() for w in Ws]
    return min(safe(graph_time, [lambda w=w: torch.matmul(x, w) for w in Ws]),
               safe(graph_time, [lambda w=w: F.linear(x, w) for w in Wts])) * 1e3


def results_header(**extra):
    "The head of a results file: date, card, torch, the tree's commit (COMMIT, else git), then `extra`."
    import subprocess
    commit = os.environ.get("COMMIT") or subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                                        text=True).stdout.strip()
    return dict(date=str(datetime.date.today()), card=torch.cuda.get_device_name(), torch=torch.__version__, commit=commit, **extra)


def family_totals(per_shape, shapes, m, value):
    "Per variant, `value(name, record)` summed over a family's layer shapes at m rows (a None value is left out)."
    tot = {}
    for (K, N) in shapes:
        for name, v in per_shape[f"{K}x{N}"][m].items():
            x = value(name, v)
            if x is not None: tot[name] = tot.get(name, 0.0) + x
    return tot


def config_sweep(out_name, sets, ms, variants, rec, bad, out=".", budget_s=300, fill=()):
    """The sweep decode_sweep.py and tc_sweep.py share. Per layer shape of `sets` (`{family: [(K, N)]}`) and each m in
    `ms`: fp16's µs, then each config of `variants(m, K, N)` (`{tag: config}`) through `gptq_gemm` inside
    `settled_weights`, checked against float64 (a failure goes to `bad`, untimed) and graph-timed over the weight copies.
    A tag in `fill` that could not run counts as "rule" there. Per family: sums and ratios to fp16 into `rec["sets"]`,
    and `rec` written to `out/out_name` (with the failures) after each family."""
    t00 = time.time()
    for fam, shapes in sets.items():
        if time.time() - t00 > budget_s: log("budget spent before", fam); break
        for (K, N) in shapes:
            key = f"{K}x{N}"
            if key in rec["shapes"]: continue
            L, Ls, Ws = shape_case(K, N)
            per = {}
            for m in ms:
                x = torch.randn(m, K, device=dev, dtype=torch.float16)
                ref = G.ref_gemm(x, **args_of(L, False))
                r = dict(fp16=fp16_us(x, Ws))
                vs = variants(m, K, N)
                rec["configs"][f"{key}/{m}"] = {t: [type(c).__name__, list(c)] for t, c in vs.items()}
                with G.settled_weights():
                    for tag, cfg in vs.items():
                        try:
                            y = G.gptq_gemm(x, config=cfg, **args_of(Ls[0], False)); err = rel(y, ref)
                        except Exception as ex:
                            log("   ", key, m, tag, "can't run:", type(ex).__name__, str(ex)[:100]); continue
                        if not err <= 2e-3: bad.append((key, m, tag, err)); log("  FAIL", key, m, tag, err); continue
                        r[tag] = safe(graph_time, [lambda A=A, c=cfg: G.gptq_gemm(x, config=c, **args_of(A, False)) for A in Ls]) * 1e3
                for t in fill: r.setdefault(t, r["rule"])
                per[m] = r
                log(f"{fam:12s} {key:12s} m={m} " + "  ".join(f"{k} {v:.2f}" for k, v in r.items())
                    + f"  [{type(next(iter(vs.values()))).__name__}]")
            rec["shapes"][key] = per
            del Ls, Ws; torch.cuda.empty_cache()
        sums = {}
        for m in ms:
            tot = family_totals(rec["shapes"], shapes, m, lambda k, v: v)
            sums[m] = dict(us=tot, x_fp16={k: tot["fp16"] / v for k, v in tot.items() if k != "fp16"})
            log(f"  {fam} m={m} x fp16: " + "  ".join(f"{k} {v:.2f}" for k, v in sums[m]["x_fp16"].items()))
        rec["sets"][fam] = sums
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, out_name), "w") as f: json.dump(dict(rec, failures=bad), f, indent=1)
    log("failures:", bad, f"[{time.time() - t00:.0f} s]")
    return rec


def copies(L, n):
    "n independent copies of a layer's tensors (rotated through so that each call reads its weights from HBM)."
    return [dict(args_of(L, False), qweight=L["qweight"].clone(), qzeros=L["qzeros"].clone(), scales=L["scales"].clone())
            for _ in range(n)]


def graph_time(fns, min_calls=64, replays=5):
    """GPU ms per call: capture the calls (rotating over weight copies) in one CUDA graph, median of its replays.
    No host launch overhead; cold weights because the rotation set is several times the L2."""
    for f in fns[:2]: f()
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
    for _ in range(replays):
        e0.record(); g.replay(); e1.record(); e1.synchronize()
        ts.append(e0.elapsed_time(e1) / (reps * len(fns)))
    del g
    return sorted(ts)[len(ts) // 2]


def safe(fn, *a, **k):
    try: return fn(*a, **k)
    except Exception as ex:
        log("   skip:", type(ex).__name__, str(ex)[:120])
        torch.cuda.synchronize()
        return float("inf")


def eager_time(fns, calls=200):
    "ms per call of a plain Python loop of `calls` calls (rotating), synchronised at the end: host time included."
    for f in fns[:3]: f()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for i in range(calls): fns[i % len(fns)]()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / calls * 1e3


def host_us(fn, calls=200):
    "Host µs per call with the GPU kept busy (a spin kernel queued first), so calls only enqueue."
    for _ in range(3): fn()
    torch.cuda.synchronize()
    torch.cuda._sleep(int(2e9 * 0.05))   # ~50 ms of GPU spin
    t = time.perf_counter()
    for _ in range(calls): fn()
    dt = (time.perf_counter() - t) / calls
    torch.cuda.synchronize()
    return dt * 1e6


def qbytes(L):
    return L["qweight"].numel() * 4 + L["scales"].numel() * 2 + L["qzeros"].numel() * 4


# ------------------------------------------------------------------------------------------------------------ sweep
def candidates(m):
    if m <= 2:
        return [DecodeConfig(block_n=bn, words_per_thread=wpi, split_k=sk, warps=w)
                for (bn, w) in ((32, 1), (64, 1), (128, 1), (256, 2), (512, 4)) for wpi in (4, 8) for sk in (8, 16, 32)]
    if m <= 4:
        return [DecodeConfig(block_n=bn, words_per_thread=wpi, split_k=sk, warps=w)
                for (bn, w) in ((32, 1), (64, 1), (128, 1), (256, 2), (512, 4)) for wpi in (2, 8) for sk in (8, 16, 32)]
    if m <= 16:
        return [MMAConfig(block_m=16, block_n=bn, block_k=bk, split_k=sk, stages=3, exp_convert=c)
                for bn in (64, 128) for bk in (64, 128) for sk in (2, 4, 8) for c in (False, True)]
    return [MMAConfig(block_m=64, block_n=bn, block_k=bk, split_k=sk, stages=st, join_unpack=j, scale_weights=sw)
            for (bn, bk, st, j, sw) in ((64, 64, 4, True, True), (128, 128, 3, False, False), (128, 64, 3, False, True),
                                        (64, 128, 3, False, False)) for sk in (1, 2, 4)] + [DequantConfig()]


def _warm(items):
    "Worker: compile configs by running them once on a small layer with the sweep's specialisation."
    import torch
    from gptq_nb.kernels import gemm as G
    L = G.random_gptq(1024, 1024, device="cuda")
    for m, cfg in items:
        x = torch.randn(m, 1024, device="cuda", dtype=torch.float16)
        try: G.gptq_gemm(x, L["qweight"], L["qzeros"], L["scales"], None, 4, 128, "gptq", None, cfg)
        except Exception as e: print("warm fail", cfg, e, flush=True)
    torch.cuda.synchronize()
    return len(items)


def precompile(items, procs=14):
    "Fill Triton's disk cache in parallel (compiles are CPU-bound and serial in one process)."
    import multiprocessing as mp
    t0 = time.time()
    with mp.get_context("spawn").Pool(procs) as pool:
        n = sum(pool.map(_warm, [items[i::procs] for i in range(procs) if items[i::procs]]))
    log(f"  precompiled {n} configs in {time.time() - t0:.0f}s")


def distinct_shapes():
    return sorted({s for shapes in FAMILIES.values() for s in shapes})


def sweep(records, ms=(1, 4, 16, 64), budget_s=200):
    log("== sweep: the rule against a grid of candidates (graph timing)")
    t0 = time.time()
    precompile([(m, c) for m in ms for c in candidates(m) if c.kind != "dequant"])
    out = records.setdefault("sweep", [])
    for m in ms:
        for (K, N) in distinct_shapes():
            if time.time() - t0 > budget_s: log("  sweep budget spent"); return
            L = layer(K, N, seed=K + N)
            Ls = copies(L, n_copies(qbytes(L), cap=64))
            x = torch.randn(m, K, device=dev, dtype=torch.float16)
            ref = G.ref_gemm(x, **Ls[0])
            rule = G.pick_config(m, K, N, 4, 128, dev)
            t_rule = safe(graph_time, [lambda A=A: G.gptq_gemm(x, config=rule, **A) for A in Ls], 32, 3)
            best = (t_rule, rule)
            for c in candidates(m):
                if c == rule: continue
                if c.kind == "decode" and not G.decode_ok(m, K, 4, False, 128, torch.float16, c): continue
                e = safe(lambda: rel(G.gptq_gemm(x, config=c, **Ls[0]), ref))
                if not e <= 2e-3:
                    records.setdefault("sweep_failures", []).append((m, K, N, str(c), e)); log("   FAIL", m, K, N, c, e); continue
                t = safe(graph_time, [lambda A=A: G.gptq_gemm(x, config=c, **A) for A in Ls], 32, 3)
                if t < best[0]: best = (t, c)
            out.append(dict(m=m, K=K, N=N, rule=str(rule), rule_us=t_rule * 1e3, best=str(best[1]), best_us=best[0] * 1e3))
            log(f"  m={m:3d} {K:5d}x{N:5d}: rule {t_rule * 1e3:7.1f} us, best {best[0] * 1e3:7.1f} us "
                f"({t_rule / best[0]:4.2f}x)  {best[1]}   [{time.time() - t0:.0f}s]")


# --------------------------------------------------------------------------------------------------------------- S1
def tinygemm_layer(K, N, gs=128, seed=0):
    "Random 4-bit g128 weights in torch's tinygemm layout, and its float64 reference W [K, N] (w = (q − 8)·s + z)."
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (N, K), generator=g, dtype=torch.int32)
    s = torch.rand(K // gs, N, generator=g) * 0.02 + 0.002
    z = (torch.rand(K // gs, N, generator=g) - 0.5) * 0.02
    packed = torch.ops.aten._convert_weight_to_int4pack((q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8).to(dev), 8)
    sz = torch.stack([s, z], -1).to(torch.bfloat16).to(dev).contiguous()
    gi = torch.arange(K) // gs
    W = ((q.t().double() - 8) * sz[..., 0].double().cpu()[gi] + sz[..., 1].double().cpu()[gi]).to(dev)
    return packed, sz, W


def gemlite_layer(L, K, N):
    "GemLite's A16Wn 4-bit g128 fp16 layer holding the same codes, scales and zeros as L."
    from gemlite.helper import A16Wn
    q = L["q"].t().contiguous().to(torch.uint8).to(dev)              # [N, K]
    s = L["scales"].t().contiguous().half()                          # [N, G]
    z = L["z"].t().contiguous().half().to(dev)
    return A16Wn(device=dev, dtype=torch.float16).from_weights(q, s, z, W_nbits=4, group_size=128)


def s1(records, families=None, ms=MS, peers=("tinygemm", "gemlite"), eager=True, budget_s=400):
    log("== S1")
    t00 = time.time()
    a = torch.empty(1 << 30, dtype=torch.uint8, device=dev); b = torch.empty_like(a)
    from triton.testing import do_bench
    t = do_bench(lambda: b.copy_(a), warmup=25, rep=200, return_mode="median")
    bw = 2 * a.numel() / (t * 1e-3)
    del a, b
    log(f"  copy bandwidth {bw / 1e12:.2f} TB/s (read+write)")
    out = records.setdefault("s1", dict(copy_bw=bw, families={}))
    precompile(sorted({(m, G.pick_config(m, K, N, 4, 128, dev)) for m in ms for shapes in FAMILIES.values()
                       for (K, N) in shapes} - {(m, DequantConfig()) for m in ms}, key=str))
    gl_ok = "gemlite" in peers
    if gl_ok:
        try:
            import gemlite  # noqa
            from gemlite.triton_kernels.config import set_autotune
            set_autotune("fast")
        except Exception as e:
            log("  gemlite unavailable:", e); gl_ok = False
    for fam in (families or FAMILIES):
        if time.time() - t00 > budget_s: log("  S1 budget spent at", fam); break
        shapes = FAMILIES[fam]
        uniq = sorted(set(shapes))
        count = {s: shapes.count(s) for s in uniq}
        per = {}
        for (K, N) in uniq:
            L = layer(K, N, seed=K * 7 + N)
            nq = n_copies(qbytes(L))
            Ls = copies(L, nq)
            qls = [qlinear_of(dict(L, **{k: A[k] for k in ("qweight", "qzeros", "scales")}), K, N) for A in Ls]
            Ws = fp16_copies(K, N)
            Wts = [w.t().contiguous() for w in Ws]
            tg = gl = None
            if "tinygemm" in peers:
                try: tg = tinygemm_layer(K, N)
                except Exception as e: log("  tinygemm layer failed:", type(e).__name__, str(e)[:100])
            if gl_ok:
                try: gl = gemlite_layer(L, K, N)
                except Exception as e: log("  gemlite layer failed:", type(e).__name__, str(e)[:100])
            floor_q, floor_f = qbytes(L) / bw * 1e3, K * N * 2 / bw * 1e3
            for m in ms:
                x = torch.randn(m, K, device=dev, dtype=torch.float16)
                r = dict(floor_q=floor_q, floor_f=floor_f, cfg=str(G.pick_config(m, K, N, 4, 128, dev)))
                ref = G.ref_gemm(x, **args_of(L, False))
                r["err"] = rel(qls[0](x), ref)
                r["fp16_graph"] = min(safe(graph_time, [lambda w=w: torch.matmul(x, w) for w in Ws]),
                                      safe(graph_time, [lambda w=w: F.linear(x, w) for w in Wts]))
                r["gptq_graph"] = safe(graph_time, [lambda q=q: q(x) for q in qls])
                if eager and m <= 16:
                    r["fp16_eager"] = min(eager_time([lambda w=w: torch.matmul(x, w) for w in Ws]),
                                          eager_time([lambda w=w: F.linear(x, w) for w in Wts]))
                    r["gptq_eager"] = eager_time([lambda q=q: q(x) for q in qls])
                if tg is not None:
                    xb = x.bfloat16()
                    f = lambda: torch.ops.aten._weight_int4pack_mm(xb, tg[0], 128, tg[1])
                    r["tinygemm_err"] = safe(lambda: rel(f(), xb.double() @ tg[2]))
                    tgs = [f] + [lambda p=tg[0].clone(), s=tg[1].clone(): torch.ops.aten._weight_int4pack_mm(xb, p, 128, s)
                                 for _ in range(min(nq, 64) - 1)]
                    r["tinygemm_graph"] = safe(graph_time, tgs)
                    if eager and m <= 16: r["tinygemm_eager"] = safe(eager_time, tgs)
                if gl is not None:
                    r["gemlite_err"] = safe(lambda: rel(gl(x), ref))
                    r["gemlite_graph"] = safe(graph_time, [lambda: gl(x)])   # one copy: GemLite's weights are its own
                    if eager and m <= 16: r["gemlite_eager"] = safe(eager_time, [lambda: gl(x)])
                per[f"{m}/{K}/{N}"] = r
            del Ls, qls, Ws, Wts, tg, gl
            torch.cuda.empty_cache()
        rows = {}
        for m in ms:
            tot = {}
            for (K, N) in uniq:
                for k, v in per[f"{m}/{K}/{N}"].items():
                    if isinstance(v, float): tot[k] = tot.get(k, 0.0) + v * count[(K, N)]
            rows[m] = tot
            g = lambda k: tot.get("fp16_graph", 0) / tot[k] if tot.get(k) else float("nan")
            e = lambda k: tot.get("fp16_eager", 0) / tot[k] if tot.get(k) and tot.get("fp16_eager") else float("nan")
            log(f"  {fam[:34]:34s} m={m:3d} graph: fp16 {tot['fp16_graph'] * 1e3:7.1f} us  gptq {g('gptq_graph'):4.2f}x  "
                f"tinygemm {g('tinygemm_graph'):4.2f}x  gemlite {g('gemlite_graph'):4.2f}x  floor {tot['fp16_graph'] / tot['floor_q']:4.2f}x"
                + (f" | eager gptq {e('gptq_eager'):4.2f}x tinygemm {e('tinygemm_eager'):4.2f}x gemlite {e('gemlite_eager'):4.2f}x" if eager else ""))
        out["families"][fam] = dict(per_shape=per, rows=rows)
        log(f"  [{time.time() - t00:.0f}s]")
        SAVE()
    # host cost per call, the GPU kept busy: QuantLinear (what users call), gptq_gemm, F.linear
    K = N = 4096
    L = layer(K, N)
    q = qlinear_of(L, K, N)
    x = torch.randn(1, 1, K, device=dev, dtype=torch.float16)
    W = torch.randn(N, K, device=dev, dtype=torch.float16)
    A = args_of(L, False)
    out["host_us"] = dict(quantlinear=host_us(lambda: q(x)), gptq_gemm=host_us(lambda: G.gptq_gemm(x, **A)),
                          linear=host_us(lambda: F.linear(x, W)))
    log(f"  host us per call (m=1, 4096x4096): {out['host_us']}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--check-fast", action="store_true")
    ap.add_argument("--skip-kernel-check", action="store_true", help="with --check-fast: only the QuantLinear calls")
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--sweep-ms", default="1,4,16,64")
    ap.add_argument("--sweep-budget", type=float, default=200)
    ap.add_argument("--s1", action="store_true")
    ap.add_argument("--s1-budget", type=float, default=400)
    ap.add_argument("--families", default=None, help="comma-separated prefixes of FAMILIES names")
    ap.add_argument("--ms", default=None, help="S1 batch rows, e.g. 1,4 (default: all of PROTOCOL's)")
    ap.add_argument("--peers", default="tinygemm,gemlite")
    ap.add_argument("--no-eager", action="store_true")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    a = ap.parse_args()
    records = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                   card=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                   commit=os.environ.get("COMMIT", "?"))
    log(records)
    os.makedirs(a.out, exist_ok=True)
    save = lambda: json.dump(records, open(os.path.join(a.out, "bench_records.json"), "w"), indent=1, default=str)
    global SAVE
    SAVE = save
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))   # `timeout` ends us: the finally below still saves
    try:
        if a.check or a.check_fast:
            if not a.skip_kernel_check: records["check"] = check(fast=a.check_fast); save()
            if a.check: records["check_decode"] = check_gemv(); save()
            records["check_calls"] = check_calls(); save()
        if a.sweep:
            sweep(records, tuple(int(v) for v in a.sweep_ms.split(",")), a.sweep_budget); save()
        if a.s1:
            fams = None
            if a.families: fams = [f for f in FAMILIES if any(f.startswith(p) for p in a.families.split(","))]
            s1(records, fams, tuple(int(v) for v in a.ms.split(",")) if a.ms else MS, tuple(a.peers.split(",")),
               not a.no_eager, a.s1_budget)
    except Exception:
        records["error"] = traceback.format_exc()[-4000:]
        log(records["error"])
    finally:
        save()


if __name__ == "__main__":
    main()
