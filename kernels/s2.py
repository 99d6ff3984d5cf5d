"""Protocol S2 (PROTOCOL.md): quantization speed and memory of a Llama-2-7B-shaped model on one GPU.

    PYTHONPATH=. python3 kernels/s2.py --out $OUT            # on the GPU: the real S2 (about 3 min with the model build)
    PYTHONPATH=. python3 kernels/s2.py --tiny --device cpu   # anywhere: the same code paths on a tiny Llama (seconds)

What it does, in this order:
1. **Solver vs reference on one block's layers.** The seven linears of a Llama-2-7B block (q, k, v, o, gate, up,
   down; random weights, Hessians from correlated random activations, one Hessian per distinct input as in the
   model), solved by (a) the paper's lazy-batch per-column algorithm written below (`paper_gptq`, IST-DASLab's
   `fasterquant` without act-order: one solve per linear, its own Cholesky each), (b) `gptq_reference` (the solver
   before issue 15), (c) `gptq_quantize_many` with the linears that share a Hessian stacked (q/k/v, gate/up), the
   fused Triton block kernel, (d) the same with the torch column loop. Proxy loss of every layer against (b).
   Before (c), a sweep of the kernel's launch config on the q/k/v problem; the fastest that agrees is kept.
2. **S2 end to end.** `LlamaForCausalLM` from the Llama-2-7B config, random fp16 weights, held on CPU; 128 windows
   of 2048 random tokens; `quantize` with 4-bit g128, desc_act off (the library's default config otherwise);
   then every layer packed into GPTQ checkpoint tensors (on the GPU, results back on the host). Wall time from the
   first calibration forward to the last packed layer; peak GPU memory (`max_memory_allocated`); host peak RSS.
   Per-phase times come from wrappers that synchronise the GPU around each phase: capture (embeddings and block-0
   inputs), Hessians, solves (each layer's proxy loss and RTN baseline included),
   layer records, writing results back (weights and codes to the host), block copies host<->device, packing; the
   rest is the block forwards. The run is done twice: plain (the end-to-end figure), then instrumented (phases), if time allows.
Prints a summary; writes s2.json under --out.
"""
import argparse, json, os, resource, sys, time, datetime, subprocess
import torch, torch.nn as nn

import gptq_nb.gptq as G
import gptq_nb.quantize as Q
import gptq_nb.loop as L   # the block loop: the names it calls live in its namespace
import gptq_nb.hessian as HS
from gptq_nb.quant import QuantizeConfig, QuantizedWeight, grid_params
from gptq_nb.pack import pack_weight

SHAPES_7B = dict(hidden=4096, inter=11008, layers=32, heads=32, vocab=32000)
SHAPES_TINY = dict(hidden=64, inter=128, layers=2, heads=4, vocab=256)


def log(*a): print(*a, flush=True)


def sync(dev):
    if torch.device(dev).type == "cuda": torch.cuda.synchronize()


def rss_gib():
    "Current and peak resident set size of this process, GiB."
    cur = next((int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")), 0) / 2**20
    return cur, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


# ---------------------------------------------------------------- the paper's solver, written here (the S2 reference)
def paper_gptq(W, H, bits=4, group_size=128, blocksize=128, percdamp=0.01):
    "GPTQ as in the paper's code (lazy batches, one Python step per column, symmetric min-max grid, natural order)."
    W = W.float().clone(); H = H.float().clone(); N, K = W.shape; maxq = 2 ** bits - 1
    dead = torch.diag(H) == 0
    H[dead, dead] = 1; W[:, dead] = 0
    H += percdamp * torch.mean(torch.diag(H)) * torch.eye(K, device=W.device)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    Q = torch.zeros_like(W)
    for i1 in range(0, K, blocksize):
        i2 = min(i1 + blocksize, K)
        W1, Q1, Err1, Hinv1 = W[:, i1:i2].clone(), torch.zeros(N, i2 - i1, device=W.device), \
            torch.zeros(N, i2 - i1, device=W.device), Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            w, d = W1[:, i], Hinv1[i, i]
            if (i1 + i) % group_size == 0:
                Wg = W[:, i1 + i:i1 + i + group_size]
                xmax = torch.maximum(Wg.min(1).values.abs(), Wg.max(1).values).clamp_min(1e-8)
                scale, zero = (2 * xmax / maxq), torch.full_like(xmax, (maxq + 1) / 2)
            q = scale * (torch.clamp(torch.round(w / scale) + zero, 0, maxq) - zero)
            Q1[:, i] = q
            err = (w - q) / d
            W1[:, i:] -= err[:, None] @ Hinv1[i, i:][None]
            Err1[:, i] = err
        Q[:, i1:i2] = Q1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return Q


def block_layers(sh, dev, n_tok=4096, seed=0):
    "One block's linears `{name: (W, H key)}` and Hessians `{key: H}` from correlated random activations."
    g = torch.Generator(device=dev).manual_seed(seed)
    d, f = sh["hidden"], sh["inter"]
    def hess(K):
        X = torch.randn(n_tok, K, device=dev, generator=g) @ (torch.randn(K, K, device=dev, generator=g) / K ** 0.5
                                                               + torch.eye(K, device=dev))
        X = X * torch.exp(0.5 * torch.randn(K, device=dev, generator=g))
        return 2 * X.T @ X / n_tok
    Hs = {"attn_in": hess(d), "o_in": hess(d), "mlp_in": hess(d), "down_in": hess(f)}
    shapes = dict(q_proj=(d, d, "attn_in"), k_proj=(d, d, "attn_in"), v_proj=(d, d, "attn_in"), o_proj=(d, d, "o_in"),
                  gate_proj=(f, d, "mlp_in"), up_proj=(f, d, "mlp_in"), down_proj=(d, f, "down_in"))
    Ws = {n: (torch.randn(N, K, device=dev, generator=g) / K ** 0.5, k) for n, (N, K, k) in shapes.items()}
    return Ws, Hs


def timed(dev, f, *a, **k):
    sync(dev); t = time.perf_counter(); r = f(*a, **k); sync(dev); return r, time.perf_counter() - t


def solver_comparison(sh, dev, cfg):
    "Stage 1: the paper's solver, gptq_reference, and the fast solver on one block's seven linears."
    Ws, Hs = block_layers(sh, dev)
    kw = dict(bits=4, group_size=128, sym=True, act_group_aware=False)   # the paper's setting: natural order
    out = dict(layers={})
    # warm-up (cuBLAS/cuSOLVER handles, Triton compile) on a small problem
    w0, h0 = Ws["k_proj"][0][:256], Hs["attn_in"]
    G.gptq_quantize(w0, h0, **kw, kernel="torch"); paper_gptq(w0, h0)
    if G.triton_usable(dev): G.gptq_quantize(w0, h0, **kw, kernel="triton")
    t_paper = 0.0
    for n, (W, k) in Ws.items():
        _, t = timed(dev, paper_gptq, W, Hs[k]); t_paper += t
    t_ref, ref = 0.0, {}
    for n, (W, k) in Ws.items():
        ref[n], t = timed(dev, G.gptq_reference, W, Hs[k], **kw, rtn=False); t_ref += t
    groups = {}
    for n, (W, k) in Ws.items(): groups.setdefault(k, []).append(n)
    def fast(kernel):
        res, tot = {}, 0.0
        for k, names in groups.items():
            rs, t = timed(dev, G.gptq_quantize_many, [Ws[n][0] for n in names], Hs[k], **kw, rtn=False, kernel=kernel)
            res.update(zip(names, rs)); tot += t
        return res, tot
    if G.triton_usable(dev):   # launch-config sweep on the q/k/v problem, each config checked against the torch loop
        qkv = [Ws[n][0] for n in groups["attn_in"]]
        base = G.gptq_quantize_many(qkv, Hs["attn_in"], **kw, rtn=False, kernel="torch")
        sweep, keep = [], None
        configs = [(16, 2), (16, 4), (32, 4), (32, 8), (64, 4), (64, 8)] if dev != "cpu" else [(32, 4)]
        for bn, nw in configs:
            G.BLOCK_KERNEL.update(BN=bn, num_warps=nw)
            try:
                G.gptq_quantize_many(qkv, Hs["attn_in"], **kw, rtn=False, kernel="triton")   # compile
                rs, t = timed(dev, G.gptq_quantize_many, qkv, Hs["attn_in"], **kw, rtn=False, kernel="triton")
                mism = max(float((a.qw.codes != b.qw.codes).float().mean()) for a, b in zip(rs, base))
                dl = max(abs(a.loss - b.loss) / b.loss for a, b in zip(rs, base))
                ok = mism < 1e-3 and dl < 1e-4
                sweep.append(dict(BN=bn, num_warps=nw, seconds=t, code_mismatch=mism, loss_rel_diff=dl, ok=ok))
            except Exception as e:
                sweep.append(dict(BN=bn, num_warps=nw, error=repr(e)[:300], ok=False))
            log("  kernel config", sweep[-1])
            if sweep[-1]["ok"] and (keep is None or sweep[-1]["seconds"] < keep["seconds"]): keep = sweep[-1]
        out["kernel_sweep"] = sweep
        if keep is None:
            log("  the fused kernel failed or disagreed in every config: S2 runs with the torch column loop")
            G.triton_usable = lambda *a, **k: False
        else: G.BLOCK_KERNEL.update(BN=keep["BN"], num_warps=keep["num_warps"]); out["kernel_config"] = dict(G.BLOCK_KERNEL)
    fast_t, t_fast = fast("triton") if G.triton_usable(dev) else (None, float("nan"))
    fast_c, t_torch = fast("torch")
    for n in Ws:
        row = dict(shape=list(Ws[n][0].shape), ref_loss=ref[n].loss, torch_loop_loss=fast_c[n].loss,
                   torch_loop_rel=abs(fast_c[n].loss - ref[n].loss) / ref[n].loss)
        if fast_t is not None:
            row.update(fused_loss=fast_t[n].loss, fused_rel=abs(fast_t[n].loss - ref[n].loss) / ref[n].loss,
                       fused_code_mismatch=float((fast_t[n].qw.codes != ref[n].qw.codes).float().mean()))
        out["layers"][n] = row
    out.update(seconds=dict(paper=t_paper, gptq_reference=t_ref, fast_fused=t_fast, fast_torch_loop=t_torch))
    best = min(t for t in (t_fast, t_torch) if t == t)
    out["speedup_vs_paper"], out["speedup_vs_reference"] = t_paper / best, t_ref / best
    return out


# ---------------------------------------------------------------- S2 end to end
def build_model(sh, dev):
    "Llama-2-7B-shaped LlamaForCausalLM, random fp16 weights (drawn on the compute device: fast), held on CPU."
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(hidden_size=sh["hidden"], intermediate_size=sh["inter"], num_hidden_layers=sh["layers"],
                      num_attention_heads=sh["heads"], num_key_value_heads=sh["heads"], vocab_size=sh["vocab"],
                      max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False)
    torch.set_default_dtype(torch.float16)
    try:
        with torch.device("meta"): model = LlamaForCausalLM(cfg)
    finally: torch.set_default_dtype(torch.float32)
    model = model.to_empty(device="cpu")
    g = torch.Generator(device=dev).manual_seed(0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.ndim == 1: p.fill_(1.0)   # RMSNorm weights
            else: p.copy_((torch.randn(p.shape, device=dev, generator=g, dtype=torch.float16) * 0.02).cpu())
    rot = type(model.model.rotary_emb)(config=cfg)           # its buffers were never computed on the meta device
    model.model.rotary_emb = rot.to("cpu")
    return model.eval()


class Phases:
    "Wrap library functions with GPU-synchronised timers (only the outermost call of a nest is counted)."
    def __init__(self, dev): self.dev, self.t, self.depth, self.undo = dev, {}, 0, []
    def wrap(self, obj, name, phase, pred=None):
        f = getattr(obj, name)
        def g(*a, **k):
            if self.depth or (pred is not None and not pred(*a, **k)): return f(*a, **k)
            self.depth += 1; sync(self.dev); t = time.perf_counter()
            try: return f(*a, **k)
            finally:
                sync(self.dev); self.t[phase] = self.t.get(phase, 0.0) + time.perf_counter() - t; self.depth -= 1
        setattr(obj, name, g); self.undo.append((obj, name, f))
    def restore(self):
        for obj, name, f in reversed(self.undo): setattr(obj, name, f)
        self.undo = []


def pack_all(model, dev):
    "Every quantized layer's checkpoint tensors, packed on the compute device and brought to the host."
    out = {}
    for name, m in model.named_modules():
        qw = getattr(m, "gptq_result", None)
        if qw is None: continue
        qd = QuantizedWeight(qw.codes.to(dev, non_blocking=True), qw.scales.to(dev), qw.zeros.to(dev), qw.g_idx.to(dev),
                             qw.bits, qw.group_size, qw.sym, None if qw.perm is None else qw.perm.to(dev))
        out[name] = {k: v.to("cpu") for k, v in pack_weight(qd).items()}
    return out


def s2_run(sh, dev, n_win, seqlen, instrument):
    model = build_model(sh, dev)
    ids = torch.randint(0, sh["vocab"], (n_win, seqlen), generator=torch.Generator().manual_seed(0))
    cal = [dict(input_ids=r.tolist(), attention_mask=[1] * seqlen) for r in ids]
    cfg = QuantizeConfig(bits=4, group_size=128, desc_act=False)
    ph = Phases(dev)
    if instrument:
        ph.wrap(L, "capture_block_inputs", "capture")
        ph.wrap(HS.Hessian, "add", "hessians")
        ph.wrap(L, "solve_method", "solves")   # 05 solves through the methods' dispatcher (32_qronos)
        ph.wrap(L, "layer_record", "records")
        ph.wrap(L, "set_linear_weight", "results_to_model")
        ph.wrap(nn.Module, "to", "block_copies", pred=lambda self, *a, **k: type(self).__name__.endswith("DecoderLayer"))
    if dev != "cpu": torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
    sync(dev); t0 = time.perf_counter()
    try:
        report = Q.quantize(model, cal, cfg, device=dev, progress=False)
        sync(dev); t_q = time.perf_counter()
        packed = pack_all(model, dev)
        sync(dev); t1 = time.perf_counter()
    finally: ph.restore()
    total = t1 - t0
    phases = dict(ph.t, packing=t1 - t_q)
    if instrument: phases["forwards_and_rest"] = total - sum(phases.values())
    cur, peak = rss_gib()
    res = dict(end_to_end_s=total, quantize_s=t_q - t0, phases_s=phases, layers=len(packed),
               peak_gpu_gib=torch.cuda.max_memory_allocated() / 2**30 if dev != "cpu" else None,
               host_rss_gib=cur, host_peak_rss_gib=peak,
               mean_loss_ratio=float(report.table["loss_ratio"].mean()), instrumented=instrument)
    del model, packed, report
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true", help="a tiny Llama and 4 windows of 64 tokens (a smoke test)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=None)
    ap.add_argument("--skip-compare", action="store_true")
    ap.add_argument("--plain-only", action="store_true", help="skip the instrumented S2 run")
    ap.add_argument("--budget", type=float, default=270, help="seconds: skip the instrumented run if it would not fit")
    a = ap.parse_args()
    sh = SHAPES_TINY if a.tiny else SHAPES_7B
    n_win, seqlen = (4, 64) if a.tiny else (128, 2048)
    commit = os.environ.get("GPTQ_NB_COMMIT")   # set it where the tree travels without its .git (the lent GPU)
    if not commit:
        try: commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        except OSError: commit = "?"
    res = dict(protocol="S2", date=str(datetime.date.today()), commit=commit,
               device=torch.cuda.get_device_name() if a.device != "cpu" else "cpu", torch=torch.__version__,
               shapes=sh, windows=n_win, seqlen=seqlen)
    try:
        import transformers, triton; res.update(transformers=transformers.__version__, triton=triton.__version__)
    except ImportError: pass
    log(json.dumps({k: res[k] for k in ("device", "date", "commit", "torch")}))
    start = time.perf_counter()
    def save():
        if a.out:
            os.makedirs(a.out, exist_ok=True)
            json.dump(res, open(os.path.join(a.out, "s2.json"), "w"), indent=1)
    if not a.skip_compare:
        t = time.perf_counter()
        res["solver"] = solver_comparison(sh, a.device, None)
        log("solver comparison", json.dumps(res["solver"]["seconds"]), f"({time.perf_counter() - t:.1f} s)")
        log("  speedup vs paper", round(res["solver"]["speedup_vs_paper"], 2), "vs gptq_reference",
            round(res["solver"]["speedup_vs_reference"], 2))
        for n, r in res["solver"]["layers"].items(): log("  ", n, json.dumps(r))
        if a.device != "cpu": torch.cuda.empty_cache()
        save()
    res["s2"] = []
    for inst in ([False] if a.plain_only else [False, True]):   # the plain run first: it is the S2 figure
        if inst and res["s2"] and time.perf_counter() - start + 1.3 * res["s2"][0]["wall_s"] > a.budget:
            log("skipping the instrumented run: it would not fit in --budget"); break
        t = time.perf_counter()
        r = s2_run(sh, a.device, n_win, seqlen, inst)
        r["wall_s"] = time.perf_counter() - t   # including the model build
        res["s2"].append(r); log("S2", json.dumps(r)); save()
    return res


if __name__ == "__main__":
    main()
