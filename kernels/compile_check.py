"""QuantLinear's Triton backend under torch.compile and CUDA graphs, on the lent GPU:

    PYTHONPATH=. python3 kernels/compile_check.py

A small MLP of QuantLinear layers (random 4-bit g128, one act-order layer, biases, m = 1 and 16, fp16 and bf16): the
eager output, then torch.compile(fullgraph=True) (Dynamo must see no graph break), torch.compile(mode="reduce-overhead")
(Inductor's CUDA graphs), and a manual torch.cuda.CUDAGraph capture. Each must match eager to 2e-3 relative, and
eager must match the torch reference backend (2e-3 fp16, 6e-3 bf16, whose reference rounds W to bf16).
"""
import torch, time
from torch import nn
import gptq_nb.kernels.gemm as G
from gptq_nb.qlinear import QuantLinear, resolve_backend


def qlayer(K, N, act_order, seed, dtype):
    L = G.random_gptq(K, N, bits=4, group_size=128, act_order=act_order, device="cuda", seed=seed)
    m = QuantLinear(K, N, bits=4, group_size=128, bias=True, device="cuda", dtype=dtype)
    for k in ("qweight", "qzeros", "scales", "g_idx"): setattr(m, k, L[k])
    m.scales = (m.scales.float() * 0.5).to(dtype)
    m.bias = (torch.randn(N, device="cuda") * 0.1).to(dtype)
    return m


def rel(a, b): return ((a.double() - b.double()).norm() / b.double().norm()).item()


def main():
    ok = True
    for dtype in (torch.float16, torch.bfloat16):
        net = nn.Sequential(qlayer(4096, 4096, False, 0, dtype), nn.SiLU(), qlayer(4096, 1024, True, 1, dtype)).eval()
        for m in (1, 16):
            x = torch.randn(m, 4096, device="cuda", dtype=dtype)
            with torch.no_grad():
                assert resolve_backend(net[0], x) == "triton"
                y = net(x)
                for l in (net[0], net[2]): l.backend = "torch"      # the reference backend: dequantize + matmul
                ye = net(x)
                for l in (net[0], net[2]): l.backend = "auto"
                ex = torch._dynamo.explain(net)(x)
                t = time.time(); yc = torch.compile(net, fullgraph=True)(x); tc = time.time() - t
                yr = None
                f = torch.compile(net, mode="reduce-overhead")
                for _ in range(3): yr = f(x)
                xs = x.clone(); s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(s):
                    for _ in range(2): net(xs)
                torch.cuda.current_stream().wait_stream(s)
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g): yg = net(xs)
                xs.copy_(torch.randn_like(xs)); g.replay(); y2 = net(xs)
                torch.cuda.synchronize()
            errs = dict(vs_torch_backend=rel(y, ye), fullgraph=rel(yc, y), reduce_overhead=rel(yr, y), cuda_graph=rel(yg, y2))
            tol = 2e-3 if dtype == torch.float16 else 6e-3   # the torch backend rounds W to x's dtype (bf16: 8 bits)
            good = ex.graph_break_count == 0 and all(e <= tol for e in errs.values())
            ok &= good
            print(f"{str(dtype):15s} m={m:2d} graph breaks {ex.graph_break_count}, compile {tc:.1f}s, rel err vs eager "
                  + ", ".join(f"{k} {v:.1e}" for k, v in errs.items()) + ("  OK" if good else "  FAIL"), flush=True)
    print("compile check:", "passed" if ok else "FAILED")


if __name__ == "__main__":
    main()
