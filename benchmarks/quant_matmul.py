"""Each quantization method's linear layer against dequantize-then-matmul, at decode and prefill.

For every method variant (awq, gptq, compressed-tensors W4A16 / W8A16 / W8A8, fp8 block, online
fp8) a layer is built through the method, as the engine builds it, with random checkpoint
tensors of the format's shapes; ``apply`` (what the engine runs) is timed against the naive
path (dequantize the canonical weights with the torch reference, then ``F.linear``, at every
call), with torch's own int4 op and the unquantized bfloat16 layer (oneDNN pre-packed where the
CPU has it) for context. Rows M = 1 and 8 are decode steps, 512 a prefill chunk.

    python benchmarks/quant_matmul.py                          # 576 -> 1536 and 4096 x 4096
    python benchmarks/quant_matmul.py --shapes 576x1536 --rows 1 8 --budget 0.1   # a quick check

Times are the lower quartile of the repeats within ``--budget`` seconds per cell, in ms. Run it
on an otherwise idle machine: with other processes on the cores, torch's threads spin-wait and
times grow tenfold.
"""

from __future__ import annotations

import argparse
import platform
import time
from typing import Callable

import torch

def variants(group: int) -> dict[str, tuple[str, dict | None]]:
    """name -> (method, quant_config; None: online), with int groups of ``group`` inputs."""
    return {
        f"awq int4 g{group}": ("awq", {"quant_method": "awq", "bits": 4, "group_size": group, "zero_point": True}),
        f"gptq int4 g{group} act-order": ("gptq", {"quant_method": "gptq", "bits": 4, "group_size": group,
                                                  "sym": True, "desc_act": True}),
        "gptq int8 channel": ("gptq", {"quant_method": "gptq", "bits": 8, "group_size": -1, "sym": True}),
        f"ct w4a16 g{group}": ("compressed-tensors", {"format": "pack-quantized", "config_groups": {"g": {
            "targets": ["Linear"], "weights": {"num_bits": 4, "type": "int", "strategy": "group",
                                               "group_size": group}}}}),
        "ct w8a8 int8": ("compressed-tensors", {"format": "int-quantized", "config_groups": {"g": {
            "targets": ["Linear"], "weights": {"num_bits": 8, "type": "int", "strategy": "channel"},
            "input_activations": {"num_bits": 8, "type": "int", "strategy": "token", "dynamic": True}}}}),
        "fp8 block 128": ("fp8", {"quant_method": "fp8", "activation_scheme": "dynamic",
                                  "weight_block_size": [128, 128]}),
        "fp8 online": ("fp8", None),
    }


def group_for(num_inputs: int) -> int:
    """128, as most checkpoints use, or 64 where 128 does not divide the inputs (576)."""
    return 128 if num_inputs % 128 == 0 else 64


def bench(fn: Callable[[], object], budget: float) -> float:
    fn()
    times, start = [], time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < budget and len(times) < 200):
        begin = time.perf_counter()
        fn()
        times.append(time.perf_counter() - begin)
    times.sort()
    return times[len(times) // 4] * 1e3


def random_layer(method_name: str, quant_config: dict | None, num_inputs: int, num_outputs: int, dtype: torch.dtype):
    """A RowParallelLinear built through the method, loaded with random tensors of the format's
    shapes (any int32 word is valid codes), processed; and its canonical weights."""
    from fw.core.layers.build import ModelBuildContext, building_model
    from fw.core.layers.linear import RowParallelLinear
    from fw.core.layers.ops import TorchOps, UnquantizedLinearMethod
    from fw.core.plugins import load_plugins

    method = load_plugins(env={"FW_PLUGINS": ""}).quantization_methods.get(method_name).from_config(
        quant_config or {})
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with building_model(ModelBuildContext(TorchOps(), UnquantizedLinearMethod(), method)):
            layer = RowParallelLinear(num_inputs, num_outputs, prefix="model.layers.0.mlp.down_proj")
    finally:
        torch.set_default_dtype(previous)
    with torch.no_grad():
        for name, param in layer.named_parameters():
            if name == "weight_shape":
                param.copy_(torch.tensor([[num_outputs, num_inputs]]))
            elif name.endswith("g_idx"):
                param.copy_(param[:, torch.randperm(num_inputs)])  # act-order: the groups shuffled
            elif param.dtype == torch.int32:
                param.copy_(torch.randint(-2**31, 2**31 - 1, param.shape, dtype=torch.int32))
            elif param.dtype == torch.int8:
                param.copy_(torch.randint(-127, 128, param.shape, dtype=torch.int8))
            elif param.dtype == torch.float8_e4m3fn:
                param.copy_((torch.randn(param.shape) * 100).to(torch.float8_e4m3fn))
            elif name == "weight":  # online: an unquantized weight
                param.copy_(torch.randn(param.shape) * 0.02)
            else:
                param.copy_(torch.rand(param.shape) * 0.01 + 0.001)
    canonical = layer.linear_method.canonical(layer)
    layer.linear_method.process_weights_after_loading(layer)
    return layer, canonical


def naive(canonical, dtype: torch.dtype) -> Callable[[torch.Tensor], torch.Tensor]:
    """Dequantize with the torch reference at every call, then F.linear."""
    from fw.plugins.quantization import fp8_weights, int_weights

    module = fp8_weights if isinstance(canonical, fp8_weights.Fp8Weights) else int_weights
    return lambda x: torch.nn.functional.linear(x, module.dequantize(canonical).to(dtype))


def context_rows(num_inputs: int, num_outputs: int, dtype: torch.dtype, rows: list[int], budget: float) -> dict:
    """Unquantized bf16 (the platform's layer) and torch's int4 op, for comparison."""
    from fw.plugins.platforms.cpu import CpuPlatform

    weight = torch.randn(num_outputs, num_inputs, dtype=dtype) * 0.02
    dense = CpuPlatform().unquantized_linear_method(dtype)
    holder = torch.nn.Module()
    holder.weight, holder.weight_shared = torch.nn.Parameter(weight, requires_grad=False), False
    dense.process_weights_after_loading(holder)
    codes = torch.randint(0, 16, (num_outputs, num_inputs), dtype=torch.int32)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    group = group_for(num_inputs)
    scales_zeros = torch.rand(num_inputs // group, num_outputs, 2).to(torch.bfloat16)
    results = {"unquantized (platform)": {}, "torch int4pack op (bf16 x)": {}}
    for m in rows:
        x = torch.randn(m, num_inputs, dtype=dtype)
        results["unquantized (platform)"][m] = bench(lambda: dense.apply(holder, x), budget)
        xb = x.bfloat16()
        results["torch int4pack op (bf16 x)"][m] = bench(
            lambda: torch.ops.aten._weight_int4pack_mm_for_cpu(xb, packed, group, scales_zeros), budget)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["576x1536", "4096x4096"], help="IN x OUT of the layer")
    parser.add_argument("--rows", nargs="+", type=int, default=[1, 8, 512])
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--budget", type=float, default=0.5, help="seconds per cell")
    parser.add_argument("--variants", nargs="+", help="names as printed (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads, "
          f"{args.dtype}; ms per call (lower quartile)")
    for shape in args.shapes:
        num_inputs, num_outputs = (int(v) for v in shape.split("x"))
        header = " | ".join(f"M={m:>4}" for m in args.rows)
        print(f"\n## {num_inputs} -> {num_outputs}\n\n| layer | path | {header} |")
        print("|---|---|" + "---:|" * len(args.rows))
        for name, times in context_rows(num_inputs, num_outputs, dtype, args.rows, args.budget).items():
            print(f"| {name} | | " + " | ".join(f"{times[m]:.3f}" for m in args.rows) + " |")
        table = variants(group_for(num_inputs))
        for variant in args.variants or list(table):
            method, config = table[variant]
            layer, canonical = random_layer(method, config, num_inputs, num_outputs, dtype)
            slow = naive(canonical, dtype)
            apply_times, naive_times = [], []
            for m in args.rows:
                x = torch.randn(m, num_inputs, dtype=dtype)
                with torch.no_grad():
                    apply_times.append(bench(lambda: layer(x), args.budget))
                    naive_times.append(bench(lambda: slow(x), args.budget))
            print(f"| {variant} | apply | " + " | ".join(f"{t:.3f}" for t in apply_times) + " |")
            print(f"| {variant} | dequantize + matmul | " + " | ".join(f"{t:.3f}" for t in naive_times) + " |")


if __name__ == "__main__":
    main()
