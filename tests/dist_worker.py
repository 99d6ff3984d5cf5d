"""One rank of tests/test_distributed.py's jobs (started by torchrun, or as a plain process with torchrun's variables):
quantize a tiny random Llama with `parallel=Ranks()` and write what it got to OUT/rank{R}.safetensors (rank 0: the
report and the stored Hessians too). FAIL_RANK=r makes rank r raise after its third layer,
FAIL_SOLVE=name makes the solver raise on that linear; CFG is QuantizeConfig JSON; N the number of windows.
FOLDER=path quantizes that checkpoint folder from its files instead (16_stream), into OUT/ckpt (work dir OUT/work)."""
import json, os, sys
import torch
from safetensors.torch import save_file
from gptq_nb import distributed
from gptq_nb.model import tiny_causal_lm
from gptq_nb.quant import QuantizeConfig
from gptq_nb.quantize import quantize


def calib(n=12, L=40, seed=0):
    "Uneven windows with structure (05_loop's `calib`): correlated activations, padding in every batch."
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(0, 256, (8,), generator=g)
    return [{"input_ids": torch.cat([base[torch.randint(0, 8, (1,), generator=g)],
                                     torch.randint(0, 256, (L - 1 - i % 7,), generator=g)])} for i in range(n)]


def run_folder(folder: str, out: str, cfg: dict, n: int = 12):
    "Quantize the checkpoint in `folder` block by block from its files, every rank taking part; rank 0 writes OUT/ckpt."
    ranks = distributed.init() if distributed.launched() else None
    rep = quantize(folder, calib(n), QuantizeConfig(group_size=32, **cfg), parallel=ranks, progress=False,
                   save_dir=os.path.join(out, "ckpt"), work_dir=os.path.join(out, "work"))
    if ranks is None or ranks.rank == 0: json.dump([r["name"] for r in rep.rows], open(os.path.join(out, "rows.json"), "w"))
    if ranks is not None: ranks.finish()
    return rep


def run(out: str, cfg: dict, fail_rank: int = -1, n: int = 12):
    ranks = distributed.init() if distributed.launched() else None
    rank = ranks.rank if ranks else 0
    m = tiny_causal_lm("llama")
    if os.environ.get("FAIL_SOLVE"):   # the solver fails on this linear, on whichever rank solves it
        import gptq_nb.loop as q
        solve = q.solve_method   # what 05's _solve_linears calls for every group of linears
        def failing(Ws, H, cfg, names=None, stats=None):
            if os.environ["FAIL_SOLVE"] in (names or []): raise torch.linalg.LinAlgError(f"injected solver failure in {os.environ['FAIL_SOLVE']}")
            return solve(Ws, H, cfg, names, stats)
        q.solve_method = failing

    def callback(row, report):
        if rank == fail_rank and len(report.rows) == 3: raise RuntimeError(f"injected failure on rank {rank}")

    rep = quantize(m, calib(n), QuantizeConfig(group_size=32, **cfg), parallel=ranks, progress=False,
                   callback=callback, store_dir=os.path.join(out, "store"))
    t = {}
    for name, mod in m.named_modules():
        if hasattr(mod, "gptq_result"):
            q = mod.gptq_result
            t |= {f"{name}.codes": q.codes.contiguous(), f"{name}.scales": q.scales.contiguous(), f"{name}.zeros": q.zeros.contiguous(),
                  f"{name}.weight": mod.weight.detach().clone()}
    save_file(t, os.path.join(out, f"rank{rank}.safetensors"))
    if rank == 0: rep.save(out)
    if ranks is not None: ranks.finish()
    return rep, m


if __name__ == "__main__":
    if os.environ.get("FOLDER"): run_folder(os.environ["FOLDER"], sys.argv[1], json.loads(os.environ.get("CFG", "{}")), int(os.environ.get("N", "12"))); sys.exit()
    run(sys.argv[1], json.loads(os.environ.get("CFG", "{}")), int(os.environ.get("FAIL_RANK", "-1")), int(os.environ.get("N", "12")))
