"""Quantize time of the methods beyond plain GPTQ against plain GPTQ (issue 20's target: <= 2x), alternated.

From the repo root:  OMP_NUM_THREADS=1 PYTHONPATH=. python kernels/method_time.py [--blocks 4] [--rounds 2]
    [--bits 4] [--methods gptq,qronos,gptaq] [--dtypes auto,float32] [--compare-gptq] [--out DIR]

The demo model (SmolLM2-135M, float32) cut to its first --blocks blocks, A1's 128 x 512 C4 calibration, the best
preset's settings (`PRESETS["best"]`: asymmetric, act-order, static groups, MSE clip, damp 0.01) at g128, each method
as `QuantizeConfig(method=...)`, for each --dtypes entry: "auto" is the user's call (`quantize`'s default
`calibration_dtype="auto"`: bf16 forwards on a CPU with native bf16, else the model's float32), "float32" forces the
model's own float32 forwards (`calibration_dtype=None`, so only the methods differ); where "auto" is float32 anyway
(no native bf16) the two are one call, timed once (the summary's auto_calibration_dtype says "None"). The report's comparison solve
(`compare_gptq`) is off, as by default; --compare-gptq turns it on for the asymmetric methods. Per call: wall (`time.perf_counter`) and process CPU seconds of the whole `quantize` call on a fresh deep
copy; the methods are run in turn within each round so all see the same machine load. Summary, per variant
("method" or "method@dtype" with several --dtypes): the median CPU seconds and the ratio of medians to plain GPTQ at
the same dtype, and each round's own ratio.
"""
import argparse, copy, datetime, json, os, platform, statistics, subprocess, time
import torch


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=4); ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--bits", type=int, default=4); ap.add_argument("--methods", default="gptq,qronos,gptaq")
    ap.add_argument("--dtypes", default="auto,float32", help="calibration_dtype per variant: auto (the default call), float32")
    ap.add_argument("--compare-gptq", action="store_true", help="also solve plain GPTQ beside each layer (report's vs_gptq)")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    a = ap.parse_args(argv)
    from gptq_nb.data import c4_calibration
    from gptq_nb.demo import load_default_model, PRESETS
    from gptq_nb.model import find_blocks
    from gptq_nb.quant import QuantizeConfig
    from gptq_nb.quantize import quantize
    torch.manual_seed(0)
    base, tok = load_default_model()
    _, blocks = find_blocks(base); del blocks[a.blocks:]; base.config.num_hidden_layers = a.blocks
    cal = c4_calibration(tok, progress=False)
    methods, dtypes = a.methods.split(","), a.dtypes.split(",")
    bad = [d for d in dtypes if d not in ("auto", "float32")]
    if bad or "gptq" not in methods: ap.error(f"--dtypes takes auto and/or float32 (got {bad}); --methods must include gptq")
    from gptq_nb.precision import calibration_dtype
    auto_is = str(calibration_dtype(blocks[0], "cpu"))   # what "auto" resolves to on this machine
    if auto_is == "None" and "auto" in dtypes and "float32" in dtypes: dtypes.remove("float32")   # the same call here
    name = lambda meth, dt: meth if len(dtypes) == 1 else f"{meth}@{dt}"
    variants = [(meth, dt) for dt in dtypes for meth in methods]
    env = dict(commit=subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
               date=str(datetime.date.today()), torch=torch.__version__, threads=torch.get_num_threads(),
               machine=f"{os.cpu_count()}-core {platform.machine()} CPU", blocks=a.blocks, bits=a.bits,
               calibration=f"{len(cal)} x {cal[0]['input_ids'].numel()}", auto_calibration_dtype=auto_is,
               compare_gptq=a.compare_gptq)
    quantize(copy.deepcopy(base), cal[:2], QuantizeConfig(bits=a.bits, group_size=128, **PRESETS["best"]), progress=False)
    rows = []
    for r in range(a.rounds):
        for meth, dt in variants:
            cfg = QuantizeConfig(bits=a.bits, group_size=128, **dict(PRESETS["best"], method=meth, compare_gptq=a.compare_gptq))
            m = copy.deepcopy(base); load0 = os.getloadavg()[0]
            t0, c0 = time.perf_counter(), time.process_time()
            quantize(m, cal, cfg, progress=False, **({} if dt == "auto" else dict(calibration_dtype=None)))
            row = dict(method=meth, variant=name(meth, dt), calibration_dtype=dt, round=r, seconds=time.perf_counter() - t0,
                       cpu_seconds=time.process_time() - c0, load_start=load0, load_end=os.getloadavg()[0])
            rows.append(row); print(json.dumps(row), flush=True)
            del m
    keys = [name(m, d) for m, d in variants]; plain = {name(m, d): name("gptq", d) for m, d in variants}
    cpu = {k: [x["cpu_seconds"] for x in rows if x["variant"] == k] for k in keys}
    med = {k: statistics.median(v) for k, v in cpu.items()}
    summary = dict(median_cpu_seconds=med, ratio_of_medians={k: med[k] / med[plain[k]] for k in keys},
                   per_round_ratios={k: [v / g for v, g in zip(cpu[k], cpu[plain[k]])] for k in keys}, **env)
    print(json.dumps(summary))
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, f"{env['date']}_cpu_method_time_{a.bits}bit_{env['commit']}{'_compare' if a.compare_gptq else ''}.json"), "w") as f:
        json.dump(dict(rows=rows, summary=summary), f, indent=1)


if __name__ == "__main__": main()
