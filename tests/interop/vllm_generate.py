"""Run inside vLLM's own venv (`make test-interop` builds it): greedy tokens of a checkpoint, as vLLM computes them.

    python vllm_generate.py CHECKPOINT PROMPTS.json OUT.json [--dtype bfloat16] [--max-tokens 16]

PROMPTS.json is a list of token-id lists; OUT.json gets {"tokens": [[...], ...], "vllm": version, "quant_method": ...}.
A refusal is written too ({"error": "..."}) and the exit status is 2, so the caller can show vLLM's exact words.
"""
import argparse, json, os, sys, traceback

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint"); ap.add_argument("prompts"); ap.add_argument("out")
    ap.add_argument("--dtype", default="bfloat16"); ap.add_argument("--max-tokens", type=int, default=16)
    a = ap.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")      # GiB of KV cache: the model is small
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")   # a shared machine: don't pin cores
    prompts = json.load(open(a.prompts))
    res = {}
    try:
        import vllm
        from vllm import LLM, SamplingParams
        res["vllm"] = vllm.__version__
        llm = LLM(model=a.checkpoint, dtype=a.dtype, enforce_eager=True, max_model_len=512, max_num_seqs=len(prompts),
                  seed=0)
        res["quant_method"] = str(getattr(llm.llm_engine.model_config, "quantization", None))
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                            SamplingParams(temperature=0.0, max_tokens=a.max_tokens, ignore_eos=True))
        res["tokens"] = [list(o.outputs[0].token_ids) for o in outs]
    except Exception as e:   # vLLM's refusal, verbatim
        res["error"] = f"{type(e).__name__}: {e}"; res["traceback"] = traceback.format_exc()[-4000:]
    json.dump(res, open(a.out, "w"), indent=1)
    sys.exit(2 if "error" in res else 0)

if __name__ == "__main__": main()
