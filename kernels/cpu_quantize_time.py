"""Quantize time of the default model on this CPU (issue 15's CPU target: <= 120 s at GPTQModel's settings, clean run).

From the repo root:  PYTHONPATH=. python kernels/cpu_quantize_time.py [--rounds 2] [--blocks N] [--out DIR]

Model: the demo's SmolLM2-135M-Instruct in float32 (`gptq_nb.demo.load_default_model`); calibration: A1's 128 C4
windows of 512 tokens (`c4_calibration`); settings: `PRESETS["gptqmodel"]` at 4-bit g128 (symmetric, group-aware
order, damp 0.05). Timed: the whole `quantize` call (`time.perf_counter`, and process CPU seconds), fresh deep copy of
the loaded model each time, with `calibration_dtype="auto"` (bf16 forwards where the CPU has them, nb 05b) and
`calibration_dtype=None` (float32 throughout) alternated `--rounds` times, so both see the same machine load. Also
the sum of the report's proxy losses per variant. One JSON line per timed call, and a summary (medians).
"""
import argparse, copy, datetime, json, os, platform, statistics, subprocess, time
import torch


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2); ap.add_argument("--blocks", type=int, default=None,
                                                                       help="quantize only the first N blocks (a quick look)")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    a = ap.parse_args(argv)
    from gptq_nb.data import c4_calibration
    from gptq_nb.demo import load_default_model, PRESETS
    from gptq_nb.model import find_blocks
    from gptq_nb.quant import QuantizeConfig
    from gptq_nb.quantize import quantize
    torch.manual_seed(0)
    base, tok = load_default_model()
    if a.blocks:
        holder, blocks = find_blocks(base); del blocks[a.blocks:]   # an nn.ModuleList: the model keeps the first N
        base.config.num_hidden_layers = a.blocks
    cal = c4_calibration(tok, progress=False)
    cfg = QuantizeConfig(bits=4, group_size=128, **PRESETS["gptqmodel"])
    env = dict(commit=subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
               date=str(datetime.date.today()), torch=torch.__version__, threads=torch.get_num_threads(),
               machine=f"{os.cpu_count()}-core {platform.machine()} CPU", blocks=a.blocks or "all",
               calibration=f"{len(cal)} x {cal[0]['input_ids'].numel()}")
    quantize(copy.deepcopy(base), cal[:2], cfg, progress=False)   # warm-up: imports, thread pools, first-call set-up
    rows = []
    for r in range(a.rounds):
        for name, dt in (("auto", "auto"), ("float32", None)):
            m = copy.deepcopy(base); load0 = os.getloadavg()[0]
            t0, c0 = time.perf_counter(), time.process_time()
            rep = quantize(m, cal, cfg, progress=False, calibration_dtype=dt)
            row = dict(variant=name, round=r, seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - c0,
                       loss_sum=float(rep.table["loss"].sum()), load_start=load0, load_end=os.getloadavg()[0], **env)
            rows.append(row); print(json.dumps(row), flush=True)
            del m, rep
    med = {v: statistics.median(x["seconds"] for x in rows if x["variant"] == v) for v in ("auto", "float32")}
    summary = dict(median_seconds=med, ratio=med["auto"] / med["float32"], **env)
    print(json.dumps(summary))
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, f"{env['date']}_cpu_quantize_time_{env['commit']}.json"), "w") as f:
        json.dump(dict(rows=rows, summary=summary), f, indent=1)


if __name__ == "__main__": main()
