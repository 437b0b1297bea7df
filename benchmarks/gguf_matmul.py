"""fw's GGUF matmul kernels against dequantize-then-matmul, per type, at the default model's
layer shapes (SmolLM2-135M: hidden 576, intermediate 1536, vocabulary 49152).

For each type, shape ``[N, K]`` and number of rows M (decode: 1 and 8; prefill: 512):

- ``kernel <isa>``: ``gguf_ops`` on the packed weight (activations quantized to int8 blocks
  inside), for each instruction set the CPU runs;
- ``dequant+mm``: the packed weight dequantized (transposed, fw's C dequantizer) to the
  activation dtype, then torch's matmul: the packed method's prefill path;
- ``mm only``: torch's matmul on a weight dequantized once, in advance (the memory-hungry
  dequantize-at-load path; bf16 through oneDNN's pre-packed weights where fw uses them).

Times are the best of ``--repeats`` (min-of-many: on a shared machine other work only slows
a run down), in microseconds. Weights are random blocks with sane scales (speed does not
depend on the values).

    python benchmarks/gguf_matmul.py                    # bf16 activations where the CPU has fast bf16
    python benchmarks/gguf_matmul.py --dtype float32 --types Q4_1 Q8_0 --rows 1 512
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from fw.kernels import gguf_ops

SHAPES = {"qkv": (960, 576), "o": (576, 576), "gate_up": (3072, 576), "down": (576, 1536), "lm_head": (49152, 576)}
SCALE_OFFSETS = {"Q4_0": [0], "Q4_1": [0, 2], "Q8_0": [0], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208]}


def random_rows(name: str, n: int, k: int, rng: np.random.Generator) -> torch.Tensor:
    qtype = GGMLQuantizationType[name]
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    data = rng.integers(0, 256, size=(n, k // block_size, type_size), dtype=np.uint8)
    for offset in SCALE_OFFSETS[name]:
        scales = rng.uniform(0.001, 0.02, size=(n, k // block_size)).astype(np.float16)
        data[:, :, offset:offset + 2] = scales.view(np.uint8).reshape(n, k // block_size, 2)
    return torch.from_numpy(data.reshape(n, -1))


def best_time(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--types", nargs="+", default=list(SCALE_OFFSETS), choices=list(SCALE_OFFSETS))
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--rows", nargs="+", type=int, default=[1, 8, 512])
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default=None)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    from fw.plugins.platforms.cpu import can_pack_bf16_weights, cpu_flags, cpu_has_fast_bf16

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if cpu_has_fast_bf16() else torch.float32)
    isas = [isa for isa in ("avx512", "avx2", "portable") if gguf_ops.isa_supported(isa)][:2]
    flags = " ".join(f for f in ("avx2", "avx_vnni", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8")
                     if f in cpu_flags())
    print(f"cpu flags: {flags}; threads {args.threads}; activations {str(dtype).removeprefix('torch.')}; "
          f"load average {os.getloadavg()[0]:.2f}; times in us, best of {args.repeats}")
    columns = [f"kernel {isa}" for isa in isas] + ["dequant+mm", "mm only"]
    print(f"{'type':<6} {'layer':<8} {'N x K':>12} {'M':>4} " + " ".join(f"{c:>14}" for c in columns))
    rng = np.random.default_rng(0)
    for name in args.types:
        ggml_type = int(GGMLQuantizationType[name])
        for shape_name in args.shapes:
            n, k = SHAPES[shape_name]
            if k % GGML_QUANT_SIZES[GGMLQuantizationType[name]][0]:
                print(f"{name:<6} {shape_name:<8} {f'{n}x{k}':>12}    -  (rows of {k} are not whole {name} blocks)")
                continue
            packed = gguf_ops.repack(random_rows(name, n, k, rng), ggml_type, k)
            kernels = [gguf_ops.PackedMatrix(packed, ggml_type, n, k, isa=isa) for isa in isas]
            dense = gguf_ops.dequantize_rows(packed, ggml_type, n, k, dtype=dtype)
            if dtype == torch.bfloat16 and can_pack_bf16_weights():  # what fw's bf16 linear layers run
                onednn = torch.ops.mkldnn._reorder_linear_weight(dense, 128)

                def matmul(x, w=onednn):
                    return torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
            else:
                def matmul(x, w=dense):
                    return x @ w.T

            for m in args.rows:
                x = torch.randn(m, k).to(dtype)
                times = [best_time(lambda kernel=kernel: kernel(x), args.repeats) for kernel in kernels]
                scratch = torch.empty(k * (-(-n // 16) * 16), dtype=dtype)
                times.append(best_time(lambda: x @ gguf_ops.dequantize_transposed(packed, ggml_type, n, k, dtype,
                                                                                  out=scratch)[:, :n], args.repeats))
                times.append(best_time(lambda: matmul(x), args.repeats))
                print(f"{name:<6} {shape_name:<8} {f'{n}x{k}':>12} {m:>4} " + " ".join(f"{t:>14.1f}" for t in times),
                      flush=True)


if __name__ == "__main__":
    main()
