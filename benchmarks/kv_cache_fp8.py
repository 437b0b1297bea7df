"""Decode attention with a bfloat16 vs an fp8 KV cache: time per step, and what the cache holds.

For a model shape (``--model``: heads, kv heads, head dim and layers of a real model; no
weights are loaded) and each context length, a batch of ``--batch-size`` decodes attends over
a paged cache whose blocks are scattered over the pool in random order, as in serving. The
kernel is the one the platform's attention backend runs for decodes: fw's C kernel on the CPU
(``fw.kernels.cpu_attention``), the Triton kernel on a GPU. One layer is timed (the median of
``--repeats`` calls after a warm-up) and multiplied by the model's layers: the attention part
of one decode step; the dtypes' calls are interleaved, so that other work on the machine
slows them alike. The capacity lines give the blocks and tokens ``--kv-cache-memory-bytes``
holds in each dtype, as the engine's start-up line computes them.

    python benchmarks/kv_cache_fp8.py                              # SmolLM2-135M shape, CPU
    python benchmarks/kv_cache_fp8.py --model llama-3-8b --context-lens 1024 4096
    python benchmarks/kv_cache_fp8.py --context-lens 256 --repeats 3  # a quick check that it runs
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

#: name -> (layers, heads, kv heads, head dim)
MODELS = {
    "smollm2-135m": (30, 9, 3, 64),
    "qwen2.5-0.5b": (24, 14, 2, 64),
    "llama-3-8b": (32, 32, 8, 128),
}
CACHE_DTYPES = {"bfloat16": torch.bfloat16, "fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


def make_cache(dtype: torch.dtype, num_blocks: int, block_size: int, kv_heads: int, head_dim: int,
               device: torch.device, scale: float) -> torch.Tensor:
    values = torch.randn(2, num_blocks, block_size, kv_heads, head_dim, device=device)
    if dtype.itemsize == 1:
        limit = torch.finfo(dtype).max
        return (values / scale).clamp_(-limit, limit).to(dtype)
    return values.to(dtype)


def attention_call(device: torch.device, query, cache, tables, seq_lens, scale, k_scale, v_scale):
    """A zero-argument call of the platform's decode-attention kernel on these inputs."""
    num_seqs = seq_lens.shape[0]
    if device.type == "cpu":
        from fw.kernels import cpu_attention

        if cpu_attention.load() is None:
            raise SystemExit("the CPU attention kernel could not be built (no C compiler?)")
        rows, out = torch.arange(num_seqs), torch.empty_like(query)
        return lambda: cpu_attention.paged_decode_attention(query, cache, tables, seq_lens, rows, out, scale, None,
                                                            k_scale, v_scale)
    from fw.kernels.triton_attention import paged_attention

    starts = torch.arange(num_seqs + 1, dtype=torch.int32, device=device)

    def call():
        paged_attention(query, cache, starts, seq_lens, tables, scale, max_query_len=1, k_scale=k_scale,
                        v_scale=v_scale)
        torch.cuda.synchronize()

    return call


def time_calls(calls: dict[str, object], repeats: int) -> dict[str, float]:
    """Median seconds per call of each, the calls interleaved so that load from other work on
    the machine falls on all of them alike."""
    for call in calls.values():
        call()  # warm-up (and the Triton compile)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="smollm2-135m")
    parser.add_argument("--context-lens", type=int, nargs="+", default=[512, 2048, 8192])
    parser.add_argument("--batch-size", type=int, default=8, help="decodes per step")
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--dtypes", nargs="+", choices=sorted(CACHE_DTYPES), default=list(CACHE_DTYPES))
    parser.add_argument("--kv-cache-memory-bytes", type=int, default=4 * 1024**3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (torch's default otherwise); 1 is steadier on a machine others load")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    layers, heads, kv_heads, head_dim = MODELS[args.model]
    print(f"{args.model}: {layers} layers, {heads} heads, {kv_heads} kv heads, head dim {head_dim}; "
          f"{args.batch_size} decodes per step; {device.type}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    print(f"{'context':>8} " + " ".join(f"{name + ' ms/step':>18}" for name in args.dtypes) + "   fp8/bf16")
    generator = torch.Generator().manual_seed(0)
    for context in args.context_lens:
        blocks_per_seq = -(-context // args.block_size)
        num_blocks = blocks_per_seq * args.batch_size
        order = torch.randperm(num_blocks, generator=generator)
        tables = order.view(args.batch_size, blocks_per_seq).int().to(device)
        seq_lens = torch.full((args.batch_size,), context, dtype=torch.int32, device=device)
        query = torch.randn(args.batch_size, heads, head_dim, generator=generator).bfloat16().to(device)
        calls = {}
        for name in args.dtypes:
            dtype = CACHE_DTYPES[name]
            # fp8 scales as --calculate-kv-scales would set them for unit-variance keys and values.
            k_scale = v_scale = 4.0 / torch.finfo(dtype).max if dtype.itemsize == 1 else 1.0
            cache = make_cache(dtype, num_blocks, args.block_size, kv_heads, head_dim, device, k_scale)
            calls[name] = attention_call(device, query, cache, tables, seq_lens, head_dim**-0.5, k_scale, v_scale)
        per_step = {name: seconds * layers * 1e3 for name, seconds in time_calls(calls, args.repeats).items()}
        del calls
        ratios = [per_step[n] / per_step["bfloat16"] for n in args.dtypes if n != "bfloat16" and "bfloat16" in per_step]
        print(f"{context:>8} " + " ".join(f"{per_step[n]:>18.2f}" for n in args.dtypes)
              + "   " + " ".join(f"{r:.2f}x" for r in ratios))

    print(f"capacity of --kv-cache-memory-bytes {args.kv_cache_memory_bytes} (block size {args.block_size}):")
    bf16_tokens = None
    for name in args.dtypes:
        block_bytes = 2 * layers * args.block_size * kv_heads * head_dim * CACHE_DTYPES[name].itemsize
        blocks = args.kv_cache_memory_bytes // block_bytes
        tokens = blocks * args.block_size
        bf16_tokens = tokens if name == "bfloat16" else bf16_tokens
        versus = f" ({tokens / bf16_tokens:.2f}x bfloat16)" if bf16_tokens and name != "bfloat16" else ""
        print(f"  {name:>9}: {blocks} blocks = {tokens} tokens{versus}")


if __name__ == "__main__":
    main()
