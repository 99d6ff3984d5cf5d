"""Where a decode step's time goes under `model.generate`: torch.profiler over one steady-state call, fp16 and gptq_nb.

GPU, from the repo root:  PYTHONPATH=. python3 kernels/s3_profile.py --out $OUT
CPU smoke test:           PYTHONPATH=. python3 kernels/s3_profile.py --tiny --device cpu

Same models and calls as `s3_generate.py` (Llama-2-7B shape, random weights; fp16 with `cache_implementation="static"`,
gptq_nb's default set-up), batch 1, 128-token prompt, `--new-tokens` new. After two warm-up calls one call is profiled
(CPU + CUDA activities). Printed and written to --out/s3_profile.json per model: wall ms per new token, CUDA kernel
time per new token (sum of device kernel durations), the share of the step the GPU is busy, and the top kernels and
host ops by total time.
"""
import argparse, json, os, sys, time
import torch
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import transformers
from transformers import LlamaConfig
import decode
from s3_generate import SHAPES, gen_kwargs
from gptq_nb.generate import install_generate
from torch.profiler import profile, ProfilerActivity


def summarize(prof, n_tokens, wall_s, top):
    ev = prof.key_averages()
    dev_key = "self_device_time_total" if hasattr(ev[0], "self_device_time_total") else "self_cuda_time_total"
    kern = sorted(((e.key, getattr(e, dev_key), e.count) for e in ev if getattr(e, dev_key) > 0), key=lambda t: -t[1])
    host = sorted(((e.key, e.self_cpu_time_total, e.count) for e in ev), key=lambda t: -t[1])
    dev_us = sum(t[1] for t in kern)
    return dict(wall_ms_per_token=1e3 * wall_s / n_tokens, device_ms_per_token=dev_us / 1e3 / n_tokens,
                gpu_busy=dev_us / 1e6 / wall_s if wall_s else None,
                top_kernels=[dict(name=k[:120], ms_per_token=t / 1e3 / n_tokens, calls_per_token=c / n_tokens) for k, t, c in kern[:top]],
                top_host=[dict(name=k[:120], ms_per_token=t / 1e3 / n_tokens, calls_per_token=c / n_tokens) for k, t, c in host[:top]])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda"); ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--new-tokens", type=int, default=32); ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    dev = torch.device(args.device); dtype = torch.float16 if dev.type == "cuda" else torch.float32
    shape = "tiny" if args.tiny else "llama2-7b"
    cfg = LlamaConfig(**SHAPES[shape], rms_norm_eps=1e-5, tie_word_embeddings=False, attn_implementation="sdpa")
    prompt = torch.randint(0, cfg.vocab_size, (1, 16 if args.tiny else 128), generator=torch.Generator().manual_seed(0)).to(dev)
    out = {}
    for label in ("fp16", "gptq"):
        m = decode.build_model(cfg, dev, dtype); m.generation_config.pad_token_id = 0
        extra = dict(cache_implementation="static")
        if label == "gptq":
            decode.quantize_in_place(m, dev, dtype)
            kw = {}
            if dev.type != "cuda":
                cc = transformers.CompileConfig(backend="eager"); cc._compile_all_devices = True
                kw = dict(devices=("cpu",), compile_config=cc)
            install_generate(m, **kw); extra = {}
        elif dev.type != "cuda":
            cc = transformers.CompileConfig(backend="eager"); cc._compile_all_devices = True; extra["compile_config"] = cc
        kwargs = gen_kwargs(prompt, args.new_tokens, extra)
        for _ in range(3): m.generate(**kwargs)
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
        if dev.type == "cuda": torch.cuda.synchronize()
        with profile(activities=acts) as prof:
            t0 = time.perf_counter(); m.generate(**kwargs)
            if dev.type == "cuda": torch.cuda.synchronize()
            wall = time.perf_counter() - t0
        out[label] = summarize(prof, args.new_tokens, wall, args.top)
        t0 = time.perf_counter(); m.generate(**kwargs)
        if dev.type == "cuda": torch.cuda.synchronize()
        out[label]["unprofiled_wall_ms_per_token"] = 1e3 * (time.perf_counter() - t0) / args.new_tokens
        r = out[label]
        print(f"== {label}: wall {r['wall_ms_per_token']:.3f} ms/token (unprofiled {r['unprofiled_wall_ms_per_token']:.3f}), "
              f"device {r['device_ms_per_token']:.3f} ms/token, busy {r['gpu_busy']}", flush=True)
        for k in r["top_kernels"]: print(f"   dev  {k['ms_per_token']:8.4f} ms x{k['calls_per_token']:6.1f}  {k['name']}")
        for k in r["top_host"][:15]: print(f"   host {k['ms_per_token']:8.4f} ms x{k['calls_per_token']:6.1f}  {k['name']}")
        del m
        if dev.type == "cuda": torch.cuda.empty_cache()
        os.makedirs(args.out, exist_ok=True)
        json.dump(out, open(os.path.join(args.out, "s3_profile.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
