"""Protocol S4 (../shared/PROTOCOL.md): one LoRA training step on a Llama-2-7B-shaped model with random weights.

LoRA r=16 on q/k/v/o, batch 4 x 512 tokens, bf16, AdamW on the adapters, gradient checkpointing on. Peak GPU memory
(`torch.cuda.max_memory_allocated` over the timed steps) and the median step time over 20 steps after 5 warm-up steps,
for the bf16 base and for the 4-bit g128 gptq_nb base, in the same process.

    PYTHONPATH=. python3 kernels/s4_lora.py                 # the protocol, on a GPU
    PYTHONPATH=. python3 kernels/s4_lora.py --tiny          # tiny shapes on CPU: checks the script runs
"""
from __future__ import annotations
import argparse, gc, json, os, statistics, subprocess, sys, time
import torch
from torch import nn


def llama_config(tiny: bool):
    from transformers import LlamaConfig
    if tiny:
        return LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=4, vocab_size=1000, max_position_embeddings=512)
    return LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096)


def random_qlinear(K: int, N: int, device, group_size: int = 128):
    "A 4-bit g128 QuantLinear with random codes and scales giving weights of std ~0.013 (speed ignores the values)."
    from gptq_nb.qlinear import QuantLinear
    m = QuantLinear(K, N, 4, group_size, False, "gptq", True, device="meta")
    G = -(-K // group_size)
    m.qweight = torch.randint(-2**31, 2**31 - 1, (K // 8, N), dtype=torch.int32, device=device)
    m.qzeros = torch.full((G, N // 8), 0x77777777, dtype=torch.int32, device=device)   # zero 8, stored minus one
    m.scales = (torch.rand(G, N, device=device) * 0.002 + 0.002).half()
    m.g_idx = (torch.arange(K, device=device) // group_size).int()
    return m


def build(kind: str, tiny: bool, device):
    "The bf16 model, or the same model with every decoder-block linear replaced by a random 4-bit QuantLinear."
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(llama_config(tiny), dtype=torch.bfloat16)
    if kind == "gptq":
        from gptq_nb.qlinear import _set_module
        for name, m in list(model.model.layers.named_modules()):
            if isinstance(m, nn.Linear):
                _set_module(model.model.layers, name, random_qlinear(m.in_features, m.out_features, device))
                del m
    gc.collect()
    if torch.device(device).type == "cuda": torch.cuda.empty_cache()
    return model


def run(kind: str, tiny: bool, device, batch: int, seq: int, steps: int, warmup: int, rank: int):
    import gptq_nb  # noqa: F401  (QuantLinear's backward; PEFT LoRA on QuantLinear)
    from peft import LoraConfig, get_peft_model
    cuda = torch.device(device).type == "cuda"
    model = build(kind, tiny, device)
    model.config.use_cache = False
    pm = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                                           target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    pm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    pm.train()
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    g = torch.Generator(device="cpu").manual_seed(0)
    vocab = model.config.vocab_size
    batches = [torch.randint(0, vocab, (batch, seq), generator=g).to(device) for _ in range(4)]
    if cuda:
        torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    base_mem = torch.cuda.memory_allocated() if cuda else None
    times, losses = [], []
    for i in range(warmup + steps):
        ids = batches[i % len(batches)]
        if cuda: torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = pm(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step(); opt.zero_grad(set_to_none=True)
        if cuda: torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        losses.append(loss.item())
        if i >= warmup: times.append(dt)
    out = dict(kind=kind, median_step_s=statistics.median(times), min_step_s=min(times),
               peak_gib=torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
               model_gib=base_mem / 2**30 if cuda else None,
               trainable=sum(p.numel() for p in params), losses=[round(l, 4) for l in losses[:2] + losses[-2:]],
               finite=all(l == l and abs(l) != float("inf") for l in losses))
    del pm, model, opt, params, batches
    gc.collect()
    if cuda: torch.cuda.empty_cache()
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny shapes on CPU (a smoke test of this script)")
    ap.add_argument("--batch", type=int, default=4); ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--steps", type=int, default=20); ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--kinds", default="bf16,gptq")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    a = ap.parse_args(argv)
    device = "cpu" if a.tiny or not torch.cuda.is_available() else "cuda"
    if a.tiny: a.batch, a.seq, a.steps, a.warmup = 2, 32, 3, 1
    try: commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except Exception: commit = ""
    info = dict(protocol="S4", device=torch.cuda.get_device_name() if device == "cuda" else "cpu", torch=torch.__version__,
                date=time.strftime("%Y-%m-%d"), commit=os.environ.get("GPTQ_NB_COMMIT", commit), batch=a.batch,
                seq=a.seq, steps=a.steps, warmup=a.warmup, rank=a.rank, tiny=a.tiny)
    try:
        import transformers, peft; info.update(transformers=transformers.__version__, peft=peft.__version__)
    except Exception: pass
    rows = []
    for kind in a.kinds.split(","):
        r = run(kind, a.tiny, device, a.batch, a.seq, a.steps, a.warmup, a.rank)
        print(json.dumps(r), flush=True); rows.append(r)
    res = dict(info=info, rows=rows)
    by = {r["kind"]: r for r in rows}
    if "bf16" in by and "gptq" in by:
        res["step_ratio"] = by["gptq"]["median_step_s"] / by["bf16"]["median_step_s"]
        if by["bf16"]["peak_gib"]: res["peak_ratio"] = by["gptq"]["peak_gib"] / by["bf16"]["peak_gib"]
        print(f"step time gptq/bf16 = {res['step_ratio']:.3f} (target <= 1.3); "
              f"peak memory gptq/bf16 = {res.get('peak_ratio', float('nan')):.3f} (target <= 0.40)", flush=True)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "s4_lora.json"), "w") as f: json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
