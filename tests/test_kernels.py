"""Triton GPTQ kernels on CPU: Triton's interpreter (TRITON_INTERPRET=1) against the float64 reference.

The interpreter must be switched on before triton is imported, so each group of checks runs in a fresh Python
(`python tests/test_kernels.py GROUP`); pytest only launches them. Shapes are small: the whole file takes ~30 s.
On a GPU the same checks run on the device (and `kernels/bench.py --check` sweeps larger shapes).
"""
import os, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(group, interpret=True, extra=""):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if interpret: env["TRITON_INTERPRET"] = "1"
    r = subprocess.run([sys.executable, __file__, group], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]


def _have_triton():
    try:
        import triton  # noqa: F401
        return True
    except Exception:
        return False


needs_triton = pytest.mark.skipif(not _have_triton(), reason="triton not installed")


@needs_triton
def test_dot_kernel_sweep(): _run("dot")


@needs_triton
def test_act_order_and_prepare(): _run("act_order")


@needs_triton
def test_gemv_kernel(): _run("gemv")


def test_imports_without_triton(): _run("no_triton", interpret=False)


# ---------------------------------------------------------------------------------------------- checks (subprocess)
def _setup():
    import torch
    from gptq_nb.kernels import gemm as G
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    return torch, G, dev


def _args(L, g_idx=False):
    return dict(qweight=L["qweight"], qzeros=L["qzeros"], scales=L["scales"], g_idx=L["g_idx"] if g_idx else None,
                bits=L["bits"], group_size=L["group_size"], checkpoint_format=L["checkpoint_format"])


def _rel(y, ref):
    y = y.double()
    assert y.isfinite().all(), "non-finite output"
    return ((y - ref).norm() / ref.norm()).item()


def check_dot():
    "Every bit width, both zero formats, sym/asym, partial groups, odd N, split-K, bias, fp16 and bf16."
    torch, G, dev = _setup()
    i = 0
    for bits in (2, 3, 4, 8):
        for (K, N, gs) in ((160, 37, 64), (96, 48, -1), (224, 33, 32)):
            for fmt, sym in (("gptq", True), ("gptq_v2", False)):
                i += 1
                L = G.random_gptq(K, N, bits=bits, group_size=gs, sym=sym, checkpoint_format=fmt, device=dev, seed=i)
                dt = torch.bfloat16 if i % 4 == 0 else torch.float16
                x = torch.randn(1 + i % 5, K, device=dev).to(dt)
                b = torch.randn(N, device=dev).to(dt) if i % 3 == 0 else None
                cfg = (G.MMAConfig(block_n=32, block_k=32, split_k=3), G.MMAConfig(block_n=16, block_k=64, exp_convert=False),
                       G.MMAConfig(block_m=32, block_n=32, block_k=16, split_k=2, exp_convert=False))[i % 3]
                e = _rel(G.gptq_gemm(x, bias=b, config=cfg, **_args(L)), G.ref_gemm(x, bias=b, **_args(L)))
                assert e < (2e-3 if dt == torch.float16 else 8e-3), (bits, K, N, gs, fmt, cfg, e)
    # dequantize-then-matmul path
    L = G.random_gptq(160, 37, bits=4, group_size=64, device=dev, seed=99)
    x = torch.randn(5, 160, device=dev).half()
    assert _rel(G.gptq_gemm(x, config=G.DequantConfig(), **_args(L)), G.ref_gemm(x, **_args(L))) < 2e-3


def check_act_order():
    "Per-element g_idx path, prepare()'s reordering, and uneven groups (which keep the gather path)."
    torch, G, dev = _setup()
    for bits in (4, 3):
        L = G.random_gptq(192, 40, bits=bits, group_size=64, act_order=True, device=dev, seed=bits)
        x = torch.randn(3, 192, device=dev).half()
        ref = G.ref_gemm(x, **_args(L, True))
        assert _rel(G.gptq_gemm(x, config=G.MMAConfig(block_n=32, block_k=64, split_k=2), **_args(L, True)), ref) < 2e-3
        P = G.prepare(**_args(L, True))
        assert P.g_idx is None and P.perm is not None
        assert _rel(P(x, G.MMAConfig(block_n=32, block_k=64, split_k=2)), ref) < 2e-3
    # a g_idx whose groups are not g rows each: prepare keeps it
    L = G.random_gptq(128, 24, bits=4, group_size=32, device=dev, seed=5)
    gi = torch.sort(torch.randint(0, 4, (128,), generator=torch.Generator().manual_seed(0))).values.to(torch.int32)
    gi[:4] = 0; gi[-4:] = 3
    A = dict(_args(L), g_idx=gi.to(dev))
    P = G.prepare(**A)
    assert P.g_idx is not None and P.perm is None
    x = torch.randn(2, 128, device=dev).half()
    assert _rel(P(x, G.MMAConfig(block_n=16, block_k=32)), G.ref_gemm(x, **A)) < 2e-3


def check_gemv():
    "The CUDA-core decode kernel: 2/4/8 bits, split-K, bias, rows 1..4 (8: the tensor-core kernel), out-of-range groups."
    torch, G, dev = _setup()
    for bits, m, sk, dt in ((4, 1, 3, torch.float16), (2, 3, 1, torch.bfloat16), (8, 8, 2, torch.float16),
                            (4, 2, 2, torch.bfloat16)):
        for seed in (bits, bits + 100):   # the second layer reuses the first one's cached launch plan
            L = G.random_gptq(192, 40, bits=bits, group_size=64, checkpoint_format="gptq_v2" if m == 3 else "gptq",
                              device=dev, seed=seed)
            x = torch.randn(m, 192, device=dev).to(dt)
            b = torch.randn(40, device=dev).to(dt)
            cfg = G.DecodeConfig(block_n=16, words_per_thread=64 * bits // 32 // 2, split_k=sk, warps=1, prefetch=bool(m % 2))
            tol = 2e-3 if dt == torch.float16 else 6e-3
            assert _rel(G.gptq_gemm(x, bias=b, config=cfg, **_args(L)), G.ref_gemm(x, bias=b, **_args(L))) < tol
    # scales followed by NaN rows: the last split steps past K and must not read a group that isn't there
    L = G.random_gptq(160, 40, bits=4, group_size=32, device=dev, seed=1)
    Gn = L["scales"].shape[0]
    padded = torch.full((Gn + 4, 40), float("nan"), dtype=torch.float16, device=dev); padded[:Gn] = L["scales"]
    A = dict(_args(L), scales=padded[:Gn])
    x = torch.randn(1, 160, device=dev).half()
    ref = G.ref_gemm(x, **A)
    for cfg in (G.DecodeConfig(block_n=16, words_per_thread=4, split_k=3, warps=2), G.MMAConfig(block_n=16, block_k=32, split_k=3)):
        assert _rel(G.gptq_gemm(x, config=cfg, **A), ref) < 2e-3, cfg


def check_no_triton():
    "The module imports and computes (torch reference) when triton can't be imported."
    sys.modules["triton"] = None  # makes `import triton` raise ImportError
    import torch
    from gptq_nb.kernels import gemm as G
    assert not G.have_triton() and not G.kernels_available("cpu")
    L = G.random_gptq(128, 24, bits=4, group_size=64, seed=0)
    x = torch.randn(2, 128)
    assert _rel(G.gptq_gemm(x, **_args(L)), G.ref_gemm(x, **_args(L))) < 1e-5


if __name__ == "__main__":
    globals()["check_" + sys.argv[1]]()
    print("OK")
