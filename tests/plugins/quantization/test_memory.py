"""What a quantized model holds in memory, as the start-up summary reports it."""

from __future__ import annotations

import dataclasses
import types

import torch

from fw import LLM

OPTIONS = dict(dtype="float32", kv_cache_memory_bytes=2**24)


def test_quantized_weights_take_a_fraction_of_the_unquantized_bytes(quant_cases, tiny_checkpoint, tmp_path,
                                                                     write_quantized_checkpoint):
    source = tiny_checkpoint("llama")
    plain = LLM(str(source), **OPTIONS).engine.loaded
    case = next(c for c in quant_cases["awq"] if c.id == "g32")
    write_quantized_checkpoint(source, tmp_path / "awq", case)
    quantized = LLM(str(tmp_path / "awq"), **OPTIONS).engine.loaded
    assert quantized.num_params == plain.num_params  # counted as the architecture has them, not as packed

    def linear_bytes(loaded, float_bytes: int) -> int:
        config = loaded.hf_config
        hidden, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
        kv = config.num_key_value_heads * hidden // config.num_attention_heads
        return layers * (hidden * (hidden + 2 * kv) + hidden * hidden + 3 * hidden * inter) * float_bytes

    others = plain.weight_bytes - linear_bytes(plain, 4)  # embedding and norms, float32 in both
    # int4 codes (0.5 byte per weight) plus float16 scales and uint8 zero points per group of 32
    expected = linear_bytes(plain, 1) / 2 * (1 + 3 / 16)
    assert abs((quantized.weight_bytes - others) - expected) < 0.02 * expected


def test_the_start_up_summary_reports_the_resident_weights():
    from fw.core.config.engine import EngineConfig
    from fw.core.engine.info import EngineInfo
    from fw.entrypoints.serve import describe_engine

    fields = {f.name: None for f in dataclasses.fields(EngineInfo)}
    fields.update(served_name="m", model="m", path="/m", source="local", load_format="safetensors",
                  architectures=("LlamaForCausalLM",), implementation="x.Llama",
                  hf_config=types.SimpleNamespace(dtype=torch.float16),
                  tokenizer=[0] * 10, platform="cpu", device=torch.device("cpu"), dtype=torch.bfloat16,
                  quantization="awq", num_params=100_000_000, num_tensors=10, load_seconds=1.0, max_model_len=64,
                  vocab_size=10, num_kv_blocks=4, block_size=16, max_sequences_per_request=8,
                  weight_bytes=54_000_000)
    summary = describe_engine(EngineInfo(**fields), EngineConfig.from_values({"model": "m"}), ("m",))
    assert "weights:" in summary and "54.0 MB in memory (0.27x of bf16)" in summary
