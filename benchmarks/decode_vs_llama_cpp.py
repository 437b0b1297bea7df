"""Single-stream decode tokens/s: fw against llama.cpp on the same GGUF file, same threads.

One request, greedy, ``--num-tokens`` tokens after a short prompt. Only decode is timed on
both sides (the prompt is evaluated first and not counted): fw steps its engine (one token
a step) and llama.cpp samples and evaluates one token at a time, as llama-cpp-python's
generate loop does. Each side runs ``--repeats`` times and reports its best run (min-of-many
timing: on a shared machine other work only ever slows a run down). fw runs here; llama.cpp
runs afterwards in a subprocess of the Python that has llama-cpp-python (``--llama-python``,
by default /work/llama-venv/bin/python: build it outside this repository with
``python3 -m venv /work/llama-venv && /work/llama-venv/bin/pip install llama-cpp-python``),
so fw's environment does not need it.

llama.cpp evaluates the prompt one token at a time (``n_batch=1``): llama-cpp-python 0.3.36's
batched prompt path (its AMX/repacked weights) crashed on the 2-core Xeon dev VM. Decode is
one token per step either way, on the same weights and buffers.

    python benchmarks/decode_vs_llama_cpp.py                     # the default model, all cores
    python benchmarks/decode_vs_llama_cpp.py --threads 1 --num-tokens 64
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

PROMPT = "Write a short story about a robot learning to paint."

LLAMA_SCRIPT = r"""
import json, sys, time
import llama_cpp
from llama_cpp import Llama
path, threads, num_tokens, repeats, prompt = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
llm = Llama(model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=2048, n_batch=1, n_ubatch=1,
            verbose=False, seed=0)
prompt_ids = llm.tokenize(prompt.encode())
rates, text = [], ""
for _ in range(repeats):
    llm.reset()
    llm.eval(prompt_ids)
    tokens = []
    start = time.perf_counter()
    for _ in range(num_tokens):
        token = llm.sample(top_k=1, temp=0.0)
        tokens.append(token)
        llm.eval([token])
    rates.append(num_tokens / (time.perf_counter() - start))
    text = llm.detokenize(tokens).decode(errors="replace")
print(json.dumps({"rates": rates, "text": text, "version": llama_cpp.__version__,
                  "system_info": llama_cpp.llama_print_system_info().decode()}))
"""


def cpu_description() -> dict[str, str]:
    """The CPU model and the SIMD flags that decide both sides' kernels."""
    model, flags = "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model == "unknown":
                    model = line.partition(":")[2].strip()
                elif line.startswith("flags"):
                    flags = set(line.partition(":")[2].split())
                    break
    except OSError:
        pass
    wanted = ["avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
              "amx_int8", "amx_bf16"]
    return {"cpu": model, "cores": str(os.cpu_count()), "flags": " ".join(f for f in wanted if f in flags) or "none"}


def fw_decode(model: str | None, threads: int, num_tokens: int, repeats: int, dtype: str) -> dict:
    import torch

    from fw import LLM
    from fw.core.engine.sampling_params import RequestOutputKind, SamplingParams
    from fw.kernels import gguf_ops

    torch.set_num_threads(threads)
    llm = LLM(model, dtype=dtype, kv_cache_memory_bytes="256MiB", max_model_len=2048)
    engine = llm.engine

    def run(count: int) -> tuple[float, list[int]]:
        request_id = f"decode-{time.monotonic_ns()}"
        params = SamplingParams(max_tokens=count + 1, temperature=0.0, ignore_eos=True,
                                output_kind=RequestOutputKind.DELTA)
        engine.add_request(request_id, PROMPT, params)
        token_ids = []
        for output in engine.step():  # the prompt, and the first token: not timed
            token_ids += output.outputs[0].token_ids
        start, steps = time.perf_counter(), 0
        while engine.has_unfinished_requests():
            for output in engine.step():
                token_ids += output.outputs[0].token_ids
            steps += 1
        return steps / (time.perf_counter() - start), token_ids

    run(8)  # warm-up: kernels built and loaded, caches allocated
    results = [run(num_tokens) for _ in range(repeats)]
    info = engine.info
    return {"rates": [rate for rate, _ in results], "text": llm.get_tokenizer().decode(results[-1][1][:24]),
            "path": str(info.path), "dtype": str(info.dtype).removeprefix("torch."),
            "quantization": info.quantization or "none",
            "gguf isa": gguf_ops.default_isa() if gguf_ops.available() else "no kernels"}


def llama_cpp_decode(python: str, path: str, threads: int, num_tokens: int, repeats: int) -> dict:
    command = [python, "-c", LLAMA_SCRIPT, path, str(threads), str(num_tokens), str(repeats), PROMPT]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"llama.cpp run failed (exit {result.returncode}): {result.stderr.strip()[-800:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a .gguf file (default: fw's embedded default model)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for both (default: all cores)")
    parser.add_argument("--num-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="auto", help="fw's --dtype (default: the platform's choice)")
    parser.add_argument("--llama-python", default="/work/llama-venv/bin/python")
    args = parser.parse_args()

    for key, value in cpu_description().items():
        print(f"{key + ':':<16} {value}")
    print(f"{'threads:':<16} {args.threads}")
    print(f"{'load average:':<16} {os.getloadavg()[0]:.2f} (before)")
    fw = fw_decode(args.model, args.threads, args.num_tokens, args.repeats, args.dtype)
    path = args.model or fw["path"]
    print(f"{'model:':<16} {path}")
    print(f"{'fw:':<16} dtype {fw['dtype']}, quantization {fw['quantization']}, GGUF kernels: {fw['gguf isa']}")
    if not Path(args.llama_python).exists():
        raise SystemExit(f"no llama-cpp-python interpreter at {args.llama_python}; see --help")
    llama = llama_cpp_decode(args.llama_python, path, args.threads, args.num_tokens, args.repeats)
    print(f"{'llama.cpp:':<16} llama-cpp-python {llama['version']}: {llama['system_info'].strip()}")
    print(f"{'load average:':<16} {os.getloadavg()[0]:.2f} (after)")
    best_fw, best_llama = max(fw["rates"]), max(llama["rates"])
    print(f"\ndecode tokens/s, {args.num_tokens} tokens, best of {args.repeats} (all runs in brackets):")
    print(f"  fw         {best_fw:8.1f}   [{', '.join(f'{r:.1f}' for r in fw['rates'])}]")
    print(f"  llama.cpp  {best_llama:8.1f}   [{', '.join(f'{r:.1f}' for r in llama['rates'])}]")
    print(f"  fw / llama.cpp: {best_fw / best_llama:.2f}x")
    print(f"\nfw's text:        {fw['text']!r}\nllama.cpp's text: {llama['text'][:80]!r}")


if __name__ == "__main__":
    sys.exit(main())
