"""The engine's per-step cost as one request's output grows: is output handling flat?

One request generates ``--num-tokens`` tokens (``ignore_eos``, greedy, with ``--logprobs``) on a
tiny random Llama checkpoint built in a temporary directory. Every ``LLMEngine.step()`` is
timed, and inside it the model runner's ``execute`` (forward and sampling); the rest of the
step (scheduling, appending the token, detokenizing, building outputs) is the output path.
The report compares the first and the last ``--window`` output tokens: where a step copies
the request's whole output, the time outside the forward grows with the output length.

Only API that fw had before delta outputs is used (``LLMEngine(EngineConfig.from_values(...))``,
``add_request``, ``step`` and the default output kind), so the same script measures an older
checkout too; benchmarks/README.md says how. The first line names the fw that was imported.

    python benchmarks/output_path.py                      # the defaults: 4,096 tokens
    python benchmarks/output_path.py --num-tokens 300     # a quick check that it runs
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

CORPUS = ["the quick brown fox jumps over the lazy dog", "a journey of a thousand miles begins with a single step",
          "to be or not to be that is the question", "ünïcödé wörds and emoji 🙂 also need bytes"] * 10


def build_checkpoint(target: Path, max_positions: int) -> Path:
    """A tiny random Llama (2 layers, hidden size 64) with a byte-level BPE tokenizer, in HF layout."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>")
    config = LlamaConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
                         bos_token_id=0, eos_token_id=1, tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.float32).save_pretrained(target)
    fast.save_pretrained(target)
    return target


def describe_fw() -> str:
    """Which fw runs: its folder, and its commit when that folder is a git checkout."""
    import fw

    root = Path(fw.__file__).parent
    commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True)
    where = f"commit {commit.stdout.strip()}{'+' if dirty.stdout.strip() else ''}" if commit.returncode == 0 else "?"
    return f"fw {fw.__version__} at {root} ({where})"


def timed_steps(engine: Any, prompt_ids: list[int], params: Any) -> list[tuple[float, float]]:
    """Run one request to the end: per step, (seconds in step(), seconds in the runner's execute())."""
    forward: list[float] = []
    execute = engine.runner.execute

    def timed_execute(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return execute(*args, **kwargs)
        finally:
            forward.append(time.perf_counter() - start)

    engine.runner.execute = timed_execute
    steps: list[tuple[float, float]] = []
    engine.add_request("bench", prompt_ids, params)
    try:
        while engine.has_unfinished_requests():
            start = time.perf_counter()
            engine.step()
            steps.append((time.perf_counter() - start, forward[-1]))
    finally:
        engine.runner.execute = execute
    return steps


def summarize(name: str, steps: list[tuple[float, float]]) -> tuple[str, float]:
    totals = [total for total, _ in steps]
    outside = [total - forward for total, forward in steps]
    ms = 1e3
    row = (f"{name:<22} {len(steps):>6} {statistics.mean(totals) * ms:>9.3f} "
           f"{statistics.mean(total - o for total, o in zip(totals, outside)) * ms:>11.3f} "
           f"{statistics.mean(outside) * ms:>11.3f} {statistics.median(outside) * ms:>11.3f}")
    return row, statistics.mean(outside)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-tokens", type=int, default=4096, help="Output tokens of the one request.")
    parser.add_argument("--window", type=int, default=256, help="Output tokens compared at the start and the end.")
    parser.add_argument("--logprobs", type=int, default=1,
                        help="Top logprobs per token (the old output path copied and re-summed them every step).")
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--output-kind", choices=["default", "delta", "final_only", "cumulative"], default="default",
                        help="SamplingParams.output_kind where the fw measured has it (the server streams DELTA, "
                        "fw.LLM asks FINAL_ONLY); 'default' leaves it unset, the only choice older fw has.")
    args = parser.parse_args()

    from fw import SamplingParams
    from fw.core.config.engine import EngineConfig
    from fw.core.engine.llm_engine import LLMEngine

    window = min(args.window, args.num_tokens // 2)
    max_model_len = args.prompt_len + args.num_tokens
    with tempfile.TemporaryDirectory() as tmp:
        path = build_checkpoint(Path(tmp), max_model_len + 64)
        engine = LLMEngine(EngineConfig.from_values({"model": str(path), "dtype": "float32",
                                                     "max_model_len": max_model_len,
                                                     "kv_cache_memory_bytes": 64 * 2**20}))
    prompt_ids = [5 + i % 300 for i in range(args.prompt_len)]
    greedy = dict(temperature=0.0, ignore_eos=True, logprobs=args.logprobs)
    if args.output_kind != "default":
        from fw.core.engine.sampling_params import RequestOutputKind

        greedy["output_kind"] = RequestOutputKind[args.output_kind.upper()]
    timed_steps(engine, prompt_ids, SamplingParams(max_tokens=32, **greedy))  # warm-up
    steps = timed_steps(engine, prompt_ids, SamplingParams(max_tokens=args.num_tokens, **greedy))
    # Step i (from 0) samples output token i + 1: the prompt fits in the first step.
    print(describe_fw())
    print(f"one request, {args.num_tokens} output tokens after a {args.prompt_len}-token prompt, greedy, "
          f"ignore_eos, logprobs={args.logprobs}, output kind {args.output_kind}; tiny random Llama (float32, CPU); "
          f"{len(steps)} steps")
    print(f"{'':<22} {'steps':>6} {'step ms':>9} {'forward ms':>11} {'outside ms':>11} {'outside p50':>11}")
    first_row, first = summarize(f"first {window} tokens", steps[:window])
    last_row, last = summarize(f"last {window} tokens", steps[-window:])
    print(first_row)
    print(last_row)
    print(f"time outside the forward, last/first: {last / first:.2f}x")


if __name__ == "__main__":
    main()
