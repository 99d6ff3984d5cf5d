"""Streaming from a checkpoint folder (notebook 16) in separate processes: a run killed mid-block and after a commit
resumes to the same checkpoint as an uninterrupted run, and peak host RSS stays far below the model's size."""
import json, os, subprocess, sys, textwrap
from pathlib import Path
import pytest, torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]

RUN = textwrap.dedent("""
    import json, os, sys, torch
    def rss(field):
        return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field)) * 1024
    def reset_peak():   # VmHWM := what is resident now (Linux's clear_refs); returns that baseline
        try: open("/proc/self/clear_refs", "w").write("5")
        except OSError: pass
        return rss("VmRSS")
    src, out, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    from gptq_nb.quant import QuantizeConfig
    from gptq_nb.quantize import quantize
    from gptq_nb.stream import quantize_folder
    from gptq_nb.io import save_quantized
    g = torch.Generator().manual_seed(0)
    cal = [{"input_ids": torch.randint(0, 500, (64,), generator=g)} for _ in range(8)]
    cfg = QuantizeConfig(group_size=128, method=os.environ.get("GPTQ_NB_TEST_METHOD", "gptq"))   # qronos/gptaq: by hand
    if mode == "cap":   # the folder path alone, after a warm-up: peak RSS growth over the resident baseline
        quantize_folder(sys.argv[4], cal, cfg, out + "-warm", device="cpu", progress=False, dtype=torch.float32)
        base = reset_peak()   # fp32 compute (CPUs compute fp16 slowly): the block in memory is twice its file size
        quantize_folder(src, cal, cfg, out, device="cpu", progress=False, dtype=torch.float32)
        print(json.dumps(dict(folder=rss("VmHWM") - base, baseline=base)))
    elif mode == "rss":   # warm-up (imports, thread pools) on a 1-block model, then each path from a reset peak
        from transformers import AutoModelForCausalLM
        quantize_folder(sys.argv[4], cal, cfg, out + "-warm", device="cpu", progress=False, dtype=torch.float32)
        res = {}
        base = reset_peak()
        quantize_folder(src, cal, cfg, out + "-dir", device="cpu", progress=False, dtype=torch.float32)
        res["folder"] = rss("VmHWM") - base
        base = reset_peak()
        m = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)   # CPUs compute fp16 slowly: both in fp32
        save_quantized(m, out + "-mem", report=quantize(m, cal, cfg, device="cpu", progress=False), dtype=torch.float16)
        res["memory"] = rss("VmHWM") - base
        print(json.dumps(res))
    else:
        work = sys.argv[4] if len(sys.argv) > 4 else None
        quantize(src, cal, cfg, device="cpu", progress=False, save_dir=out, work_dir=work)
""")



def run(*args, env=None, timeout=600):
    e = {**os.environ, "PYTHONPATH": str(ROOT), "TRITON_INTERPRET": "1", **(env or {})}
    return subprocess.run([sys.executable, "-c", RUN, *map(str, args)], capture_output=True, text=True, env=e, timeout=timeout)


def tensors(ckpt):
    out = {}
    for f in sorted(Path(ckpt).glob("model*.safetensors")): out.update(load_file(str(f)))
    return out


def random_llama(path, hidden, inter, layers, vocab=512, seed=0):
    "A random fp16 Llama written as sharded safetensors; returns its size in bytes."
    import transformers as tf
    torch.manual_seed(seed)
    cfg = tf.LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=8,
                         num_key_value_heads=4, vocab_size=vocab, max_position_embeddings=256)
    m = tf.LlamaForCausalLM(cfg).half()
    m.save_pretrained(path, max_shard_size="40MB")
    return sum(p.numel() * p.element_size() for p in m.parameters())


def test_resume_after_kill(tmp_path):
    src = tmp_path / "src"; random_llama(src, 128, 256, 4)
    ref = run(src, tmp_path / "ref", "folder")
    assert ref.returncode == 0, ref.stderr[-3000:]
    work = tmp_path / "work"
    r = run(src, tmp_path / "out", "folder", work, env={"GPTQ_NB_CRASH": "after:1"})   # killed once block 1 is committed
    assert r.returncode == 137, r.stderr[-3000:]
    assert json.loads((work / "state.json").read_text())["done"] == 2 and not (tmp_path / "out").exists()
    r = run(src, tmp_path / "out", "folder", work, env={"GPTQ_NB_CRASH": "in:2"})      # killed inside block 2
    assert r.returncode == 137, r.stderr[-3000:]
    assert json.loads((work / "state.json").read_text())["done"] == 2
    r = run(src, tmp_path / "out", "folder", work)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = tensors(tmp_path / "ref"), tensors(tmp_path / "out")
    assert sorted(a) == sorted(b)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:3]
    assert not work.exists()


def test_peak_rss_far_below_model_size(tmp_path):
    size = random_llama(tmp_path / "src", 512, 1536, 12)   # 74 MiB of fp16 weights
    random_llama(tmp_path / "warm", 512, 1536, 1)
    r = run(tmp_path / "src", tmp_path / "out", "rss", tmp_path / "warm")
    assert r.returncode == 0, r.stderr[-3000:]
    grow = {k: v / 2**20 for k, v in json.loads(r.stdout.strip().splitlines()[-1]).items()}
    print(f"model {size / 2**20:.0f} MiB fp16 (fp32 compute); peak RSS growth: folder path {grow['folder']:.0f} MiB, "
          f"in-memory path {grow['memory']:.0f} MiB")
    # The in-memory path holds the whole (fp32) model, the folder path doesn't: their growths differ by most of it.
    # NOT the "model several times the cap" at this scale: a fixed overhead (report, allocator, one block's
    # solves) about the model's size dominates a 74 MiB model (folder path: 147-225 MiB before issue 14's changes,
    # 73-79 after, 2026-12-03). At scale it holds: the 13B-shaped GPU run (kernels/RESULTS.md) peaked at 3.9 GiB for
    # the whole process with a 26 GB checkpoint; the 40-block test below checks it on the CPU.
    assert grow["memory"] - grow["folder"] > 0.5 * 2 * size / 2**20, grow
    a, b = tensors(tmp_path / "out-dir"), tensors(tmp_path / "out-mem")
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.skipif(os.environ.get("GPTQ_NB_SLOW") != "1", reason="minutes of CPU: GPTQ_NB_SLOW=1 (make test-slow)")
def test_rss_does_not_grow_with_the_number_of_blocks(tmp_path):
    """10 and 40 blocks of one 768-wide Llama (125 and 496 MiB fp16) quantized from their files: the peak RSS growth
    stays far below the model's size, and 30 more blocks add little to it (issue 14: about one block plus the
    calibration activations, whatever the model's size).

    Measured (2026-12-03, 2-core CPU, fp32 compute; growth of 10 / 40 blocks, MiB): before issue 14's changes 395 / 471
    (2026-12-02: 406 / 459 and 501), the peak set inside one block's solves over a high-water mark that crept up
    ~3 MiB a block; with the chunked NaN check on H (nb 02) alone 414 / 447 (no visible change); with the solver's
    K x K temporaries cut from 6 to 2 (nb 03) too 147 / 341 (the solves' peak gone, the creep left); with glibc's mmap
    threshold pinned (nb 16) too 119 / 150, 121 / 144 and 122 / 132 (three runs). The pinned threshold alone: 188 / 205.
    Methods that solve against the full-precision model (GPTQ_NB_TEST_METHOD=qronos / gptaq, commit 7619da8+, same
    day, one run each; plain 119 / 138 in the same hour): Qronos-style 240 / 269 before `qronos_target` kept at most two
    K x K float64 temporaries, 213 / 220 after; GPTAQ 177 / 199."""
    grow, sizes = {}, {}
    for n in (10, 40):
        sizes[n] = random_llama(tmp_path / f"src{n}", 768, 2048, n) / 2**20
        if n == 10: random_llama(tmp_path / "warm", 768, 2048, 1)
        r = run(tmp_path / f"src{n}", tmp_path / f"out{n}", "cap", tmp_path / "warm", timeout=3600)
        assert r.returncode == 0, r.stderr[-3000:]
        grow[n] = json.loads(r.stdout.strip().splitlines()[-1])["folder"] / 2**20
        print(f"{n} blocks, {sizes[n]:.0f} MiB fp16: peak RSS growth {grow[n]:.0f} MiB")
    assert grow[40] < 0.5 * sizes[40], (grow, sizes)   # well below the model (measured 132-150 MiB of 497)
    assert grow[40] < grow[10] + 0.25 * (sizes[40] - sizes[10]), (grow, sizes)   # 30 more blocks (371 MiB): +10-31 MiB
