"""The Hugging Face transformers backend of ``fw bench throughput``.

The same requests as fw's run through ``model.generate`` in static, left-padded batches,
as vLLM's ``--backend hf`` does. Requests are sorted by output length (then prompt
length) so that a batch's members need similar numbers of decode steps. A batch
generates until its longest request is done, with ``min_new_tokens`` equal to that so
that no row stops at EOS (fw's ``ignore_eos``); only each request's own output length
is counted, so the extra tokens shorter requests generate are work HF does but gets no
credit for. The printout says how many tokens were generated and how many counted.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch
from tqdm import tqdm

from fw.core.config import ConfigError
from fw.entrypoints.bench import BenchRequest, ModelInfo, ThroughputResult
from fw.core.errors import ModelLoadError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

#: Load formats whose files transformers reads itself.
HF_DIRECTORY_FORMATS = frozenset({"safetensors", "pt"})


def find_gguf_file(path: Path) -> Path:
    """The .gguf file a GGUF model path names: the file itself, or the only one in the directory."""
    if path.is_file():
        return path
    files = sorted(path.glob("*.gguf"))
    if len(files) != 1:
        raise ModelLoadError(f"the hf backend needs exactly one .gguf file in {path}, found {len(files)}")
    return files[0]


def load_hf_model(info: ModelInfo) -> PreTrainedModel:
    """The model fw runs, as a transformers model with fw's dtype on fw's device."""
    from transformers import AutoModelForCausalLM

    try:
        if info.load_format == "dummy":
            model = AutoModelForCausalLM.from_config(info.hf_config, dtype=info.dtype)
        elif info.load_format == "gguf":
            file = find_gguf_file(info.path)
            model = AutoModelForCausalLM.from_pretrained(str(file.parent), gguf_file=file.name, dtype=info.dtype)
        elif info.load_format in HF_DIRECTORY_FORMATS:
            model = AutoModelForCausalLM.from_pretrained(str(info.path), dtype=info.dtype)
        else:
            raise ConfigError(f"the hf backend cannot read --load-format {info.load_format} weights; "
                              "use --backend fw")
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"transformers cannot load {info.path}: {str(exc).splitlines()[0]}") from None
    return model.to(info.device).eval()


def sorted_batches(requests: Sequence[BenchRequest], max_batch_size: int) -> list[list[BenchRequest]]:
    """Batches of similar output (then prompt) length, so that little work is wasted on padding."""
    ordered = sorted(requests, key=lambda r: (r.output_len, len(r.prompt_token_ids)))
    return [ordered[i:i + max_batch_size] for i in range(0, len(ordered), max_batch_size)]


def left_padded(batch: Sequence[BenchRequest], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask, both [batch, longest prompt], padded on the left for generation."""
    width = max(len(r.prompt_token_ids) for r in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, request in enumerate(batch):
        n = len(request.prompt_token_ids)
        input_ids[row, width - n:] = torch.tensor(request.prompt_token_ids)
        attention_mask[row, width - n:] = 1
    return input_ids.to(device), attention_mask.to(device)


def sampling_kwargs(temperature: float) -> dict[str, Any]:
    """The same sampling as fw's: plain temperature sampling, or greedy at temperature 0."""
    if temperature <= 0:
        return {"do_sample": False}
    # top_k=0 and top_p=1 switch off generate's defaults (top_k 50 among them), which fw does not apply.
    return {"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0}


@torch.inference_mode()
def run_hf_backend(
    model: PreTrainedModel,
    info: ModelInfo,
    requests: Sequence[BenchRequest],
    *,
    max_batch_size: int,
    temperature: float,
    detokenize: bool,
    seed: int,
) -> ThroughputResult:
    """Generate every request in padded batches; count each request's own prompt and output tokens."""
    tokenizer = info.tokenizer
    pad_id = next((t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0)
    torch.manual_seed(seed)
    num_prompt = num_output = num_generated = num_padding = 0
    bar = tqdm(total=len(requests), desc="HF generate", unit=" req", dynamic_ncols=True)
    start = time.perf_counter()
    with bar:
        for batch in sorted_batches(requests, max_batch_size):
            input_ids, attention_mask = left_padded(batch, pad_id, info.device)
            new_tokens = max(r.output_len for r in batch)
            output = model.generate(
                input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=new_tokens,
                min_new_tokens=new_tokens, pad_token_id=pad_id, use_cache=True, **sampling_kwargs(temperature),
            )
            generated = output[:, input_ids.shape[1]:].tolist()
            # A row that generated fewer tokens than asked for (it cannot, with min_new_tokens) counts only those.
            own = [row[:request.output_len] for row, request in zip(generated, batch)]
            if detokenize:
                tokenizer.batch_decode(own, skip_special_tokens=True)
            num_prompt += sum(len(r.prompt_token_ids) for r in batch)
            num_output += sum(len(ids) for ids in own)
            num_generated += sum(len(row) for row in generated)
            num_padding += int((attention_mask == 0).sum())
            bar.update(len(batch))
            bar.set_postfix_str(f"output: {num_output / (time.perf_counter() - start):.1f} tok/s", refresh=False)
    elapsed = time.perf_counter() - start
    note = (
        f"hf: batches of up to {max_batch_size} requests sorted by output length, left-padded; each batch "
        f"generates to its longest output and only each request's own output tokens are counted "
        f"({num_generated} generated, {num_output} counted; {num_padding} prompt padding tokens)."
    )
    return ThroughputResult(
        backend="hf", num_requests=len(requests), num_prompt_tokens=num_prompt, num_output_tokens=num_output,
        elapsed_seconds=elapsed, note=note,
        extra={"num_generated_tokens": num_generated, "num_prompt_padding_tokens": num_padding,
               "max_batch_size": max_batch_size},
    )
