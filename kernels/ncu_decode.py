"""What limits the 4-bit kernels at decode sizes, read from the hardware counters (issue 10's "what limits it").

Run on the lent GPU from the repo root, under Nsight Compute:
    ncu --clock-control none --section SpeedOfLight --section Occupancy --section WarpStateStats --section LaunchStats \
        -k regex:_gptq --log-file $OUT/ncu_decode.txt python3 kernels/ncu_decode.py
Each (shape, m) below runs `gptq_gemm` as a user calls it (the rule's kernel and launch config) twice: the first call
compiles, the second is the one to read (ncu profiles both; they are the same launch). Shapes: Llama-2-7B's merged
q/k/v, o, and down (mid-sized layers that run far from the HBM floor) and Llama-2-70B's gate/up (large, closest to it);
from m = 2 the rule runs the tensor-core GEMV (`_gptq_tc_kernel`, 22a) on these, and the long-K 70B down projection
and a short-K wide layer show whether its waits are its loads or its split-K epilogue.
"""
import torch
from gptq_nb.kernels import gemm as G

CASES = [((4096, 12288), 1), ((4096, 4096), 1), ((11008, 4096), 1), ((8192, 57344), 1), ((4096, 12288), 4),
         ((4096, 12288), 8), ((4096, 12288), 2), ((28672, 8192), 4), ((2048, 16384), 4)]

if __name__ == "__main__":
    for (K, N), m in CASES:
        L = G.random_gptq(K, N, bits=4, group_size=128, device="cuda", seed=K + N)
        x = torch.randn(m, K, device="cuda", dtype=torch.float16)
        kw = dict(qweight=L["qweight"], qzeros=L["qzeros"], scales=L["scales"], g_idx=None, bits=4, group_size=128,
                  checkpoint_format=L["checkpoint_format"])
        for _ in range(2): G.gptq_gemm(x, **kw)
        torch.cuda.synchronize()
        plan = G._PLANS[next(k for k in G._PLANS if k[0] == m and k[1] == K and k[8] == L["scales"].shape)]
        print(f"{K}x{N} m={m}: {plan[0]}", plan[1].grid if plan[0] == "kernel" else "", flush=True)
        del L
