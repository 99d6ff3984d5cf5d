"""Protocol A1-quick rows for chosen methods and bits, one JSON line each as soon as it finishes (issue 20).

From the repo root:  OMP_NUM_THREADS=1 PYTHONPATH=. nice -n 5 python kernels/a1_methods.py \
    --rows qronos:3,qronos:4,gptaq:3,qronos+refine:3 --out artifacts/a1_methods.jsonl

`make bench-accuracy` (`gptq_nb.demo.bench_accuracy`) runs all six methods at 4 and 3 bits and only writes when every
row is done: hours on this 2-core machine. This driver runs the same thing row by row: the same model
(`load_default_model`), the same 40 WikiText-2 windows of 2048 and 128 x 512 C4 calibration, and each row's settings
taken from `gptq_nb.demo.BENCH_CONFIGS` itself (g128; the method keys below are read off those entries, so nothing is
re-typed here). Each row is appended to --out (flushed) when it finishes, so a run that dies keeps the rows before it.

Per row: perplexity; quantize wall and process CPU seconds (`time.perf_counter` / `time.process_time` around
`quantize`, as bench_accuracy takes them: for the asymmetric methods this includes, unless --no-compare-gptq, the
plain-GPTQ solve that `QuantizeConfig(compare_gptq=True)` runs beside each layer for the report's comparison; time
them with kernels/method_time.py instead); and from the report the per-layer ratio `vs_gptq` = the method's objective
/ plain GPTQ's objective on the same layer inputs (worst layer, median, how many layers over 1.01; NaN-only columns,
as without the comparison, give none). --progress-log gets one line per solved layer (wall seconds so far), to watch a long run.
"""
import argparse, copy, dataclasses, datetime, json, os, platform, subprocess, sys, time
import torch


def method_key(kw):
    "`gptq`, `refine`, `gptaq`, `gptaq+refine`, `qronos`, `qronos+refine` for a BENCH_CONFIGS entry."
    m = kw.get("method", "gptq")
    if kw.get("refine"): return "refine" if m == "gptq" else m + "+refine"
    return m


def bench_rows():
    "`{key: (label, kw)}` for the best-preset entries of `BENCH_CONFIGS` (GPTQModel's defaults left out)."
    from gptq_nb.demo import BENCH_CONFIGS, PRESETS
    best = PRESETS["best"]
    return {method_key(kw): (label, kw) for label, kw in BENCH_CONFIGS.items()
            if all(kw.get(k) == v for k, v in best.items())}


def commit():
    r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "gptq_nb"], capture_output=True, text=True).stdout.strip()
    return (r.stdout.strip() or "unknown") + ("+dirty" if dirty else "")


def layer_summary(report):
    "Worst / median `vs_gptq` over the report's layers, the worst layer's name, layers over 1.01 (None if no column)."
    t = report.table
    if "vs_gptq" not in t.columns: return {}
    v = t.vs_gptq.astype(float).dropna()
    if v.empty: return {}
    i = v.idxmax()
    return dict(vs_gptq_worst=float(v.max()), vs_gptq_worst_layer=str(t.name[i]), vs_gptq_median=float(v.median()),
                vs_gptq_over_1pct=int((v > 1.01).sum()), layers=int(len(v)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="qronos:3,qronos:4,gptaq:3,qronos+refine:3", help="method:bits,... (keys below)")
    ap.add_argument("--out", default="artifacts/a1_methods.jsonl")
    ap.add_argument("--progress-log", default=None, help="one line per solved layer (default: --out with .progress)")
    ap.add_argument("--windows", type=int, default=40)
    ap.add_argument("--calibration-dtype", default="auto", choices=["auto", "model"],
                    help="quantize_model's calibration_dtype: 'auto' (bf16 forwards on a CPU that has them, nb 05b) or the model's own")
    ap.add_argument("--no-compare-gptq", action="store_true",
                    help="skip the plain-GPTQ solve beside each asymmetric layer (no vs_gptq; the default user call)")
    a = ap.parse_args(argv)
    from gptq_nb.data import c4_calibration, wikitext2_test_text
    from gptq_nb.demo import load_default_model
    from gptq_nb.eval import eval_windows, perplexity
    from gptq_nb.quant import QuantizeConfig
    from gptq_nb.quantize import quantize
    table = bench_rows()
    todo = [(k, int(b)) for k, b in (r.split(":") for r in a.rows.split(","))]
    bad = [k for k, _ in todo if k not in table]
    if bad: sys.exit(f"unknown method(s) {bad}; known: {sorted(table)}")
    out = os.path.abspath(a.out); os.makedirs(os.path.dirname(out), exist_ok=True)
    plog = open(a.progress_log or out.rsplit(".", 1)[0] + ".progress", "a", buffering=1)
    torch.manual_seed(0)   # as `python -m gptq_nb.demo --bench` does
    base, tok = load_default_model()
    win, cal = eval_windows(tok, wikitext2_test_text(), 2048, a.windows), c4_calibration(tok, progress=False)
    env = dict(commit=commit(), date=str(datetime.date.today()), torch=torch.__version__,
               machine=f"{os.cpu_count()}-core {platform.machine()} CPU", threads=torch.get_num_threads(),
               windows=int(win.shape[0]), calibration=f"{len(cal)} x {cal[0]['input_ids'].numel()}")
    for key, bits in todo:
        label, kw = table[key]
        cfg = QuantizeConfig(bits=bits, group_size=128, **dict(kw, compare_gptq=not a.no_compare_gptq))
        m = copy.deepcopy(base)
        t0, c0, load0 = time.perf_counter(), time.process_time(), os.getloadavg()[0]
        def cb(row, report, t0=t0):
            print(f"{key}:{bits} {row.get('name')} {time.perf_counter() - t0:.0f}s load {os.getloadavg()[0]:.1f}", file=plog)
        cal_dt = None if a.calibration_dtype == "model" else a.calibration_dtype
        report = quantize(m, cal, cfg, callback=cb, progress=False, calibration_dtype=cal_dt)
        secs, cpu = time.perf_counter() - t0, time.process_time() - c0
        t1 = time.perf_counter()
        ppl = perplexity(m, win, progress=False)
        row = dict(key=key, method=label, bits=bits, ppl=ppl, seconds=secs, cpu_seconds=cpu,
                   eval_seconds=time.perf_counter() - t1, load_start=load0, load_end=os.getloadavg()[0],
                   config=dataclasses.asdict(cfg), calibration_dtype=a.calibration_dtype, **layer_summary(report), **env)
        with open(out, "a") as f: f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
        del m, report


if __name__ == "__main__": main()
