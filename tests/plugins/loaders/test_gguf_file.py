"""fw's GGUF header reader against gguf.GGUFReader, on files written with gguf.GGUFWriter."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader, GGUFValueType, GGUFWriter

from fw.plugins.loaders.gguf_file import read_gguf_file

V = GGUFValueType
# One key per value type the format has, with values that need each type's full range.
SCALARS = {
    "test.u8": (255, V.UINT8), "test.i8": (-128, V.INT8), "test.u16": (65535, V.UINT16),
    "test.i16": (-32768, V.INT16), "test.u32": (2**32 - 1, V.UINT32), "test.i32": (-(2**31), V.INT32),
    "test.f32": (0.1, V.FLOAT32), "test.bool": (True, V.BOOL), "test.u64": (2**64 - 1, V.UINT64),
    "test.i64": (-(2**63), V.INT64), "test.f64": (0.1, V.FLOAT64), "test.text": ("héllo ✓", V.STRING),
}  # fmt: skip


@pytest.fixture
def rich_gguf(ckpt, tied_llama, tiny_gguf_tokenizer, tmp_path):
    """A tiny llama GGUF with a tokenizer, mixed tensor types, and every metadata value type."""
    path = ckpt.write_gguf(
        tmp_path / "rich.gguf", tied_llama, Q.Q4_K,
        overrides={"blk.0.attn_q.weight": Q.Q8_0, "blk.1.ffn_up.weight": Q.F16}, tokenizer=tiny_gguf_tokenizer,
    )  # fmt: skip
    # Re-written with the extra keys (GGUFWriter cannot append to a file).
    reader = GGUFReader(path)
    extended = tmp_path / "extended.gguf"
    writer = GGUFWriter(str(extended), "llama")
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        sub_type = field.types[-1] if field.types[0] == V.ARRAY else None
        writer.add_key_value(field.name, field.contents(), field.types[0], sub_type)
    for key, (value, vtype) in SCALARS.items():
        writer.add_key_value(key, value, vtype)
    writer.add_array("test.floats", [1.5, -2.25])
    writer.add_custom_alignment(64)
    for tensor in reader.tensors:
        data = np.array(tensor.data)
        raw_dtype = None if tensor.tensor_type in (Q.F32, Q.F16) else tensor.tensor_type
        writer.add_tensor(tensor.name, data, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return extended


def test_metadata_matches_ggufs_reader_with_string_arrays_as_their_length(rich_gguf, tiny_gguf_tokenizer):
    parsed = read_gguf_file(rich_gguf)
    fields = {k: f for k, f in GGUFReader(rich_gguf).fields.items() if not k.startswith("GGUF.")}

    assert list(parsed.metadata) == list(fields)
    for key, field in fields.items():
        expected = field.contents()
        if isinstance(expected, list) and expected and isinstance(expected[0], str):
            expected = len(expected)
        assert parsed.metadata[key] == expected, key
    assert parsed.metadata["tokenizer.ggml.tokens"] == len(tiny_gguf_tokenizer["tokens"])
    assert parsed.metadata["test.text"] == "héllo ✓" and parsed.metadata["test.u64"] == 2**64 - 1
    assert parsed.architecture == "llama" and parsed.metadata["general.alignment"] == 64


def test_metadata_follows_transformers_fast_reader(rich_gguf):
    reader = pytest.importorskip("transformers.integrations.gguf")  # transformers >= 5

    metadata, tensor_names = reader.read_gguf_metadata(str(rich_gguf))
    parsed = read_gguf_file(rich_gguf)

    assert parsed.metadata == metadata and parsed.tensor_names == tensor_names


def test_tensor_table_and_bytes_match_ggufs_reader(rich_gguf):
    parsed = read_gguf_file(rich_gguf)
    tensors = GGUFReader(rich_gguf).tensors

    assert [t.name for t in parsed.tensors] == [t.name for t in tensors]
    for ours, theirs in zip(parsed.tensors, tensors):
        assert ours.shape == tuple(reversed(theirs.shape.tolist())), ours.name
        assert ours.tensor_type == theirs.tensor_type and ours.num_bytes == theirs.n_bytes, ours.name
        assert parsed.tensor_bytes(ours).tobytes() == np.asarray(theirs.data).tobytes(), ours.name
    types = {t.name: t.tensor_type for t in parsed.tensors}
    assert types["blk.0.attn_q.weight"] == Q.Q8_0 and types["blk.1.ffn_up.weight"] == Q.F16
    assert types["blk.0.attn_k.weight"] == Q.Q4_K and types["output_norm.weight"] == Q.F32


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda data: b"", "the file is empty"),
        (lambda data: b"GGUX" + data[4:], "does not start with the GGUF magic"),
        (lambda data: data[:4] + (1).to_bytes(4, "little") + data[8:], "GGUF version 1; fw reads versions 2 and 3"),
        (lambda data: data[:4] + (3).to_bytes(4, "big") + data[8:], "big-endian"),
        (lambda data: data[:30], "the header ends early"),
        (lambda data: data[: len(data) // 2], "ends early|past the end of the file"),
        (lambda data: data[:-1], "tensor .* extends past the end of the file"),
    ],
    ids=["empty", "magic", "version", "big-endian", "cut-header", "cut-half", "cut-last-byte"],
)
def test_bad_files_say_what_is_wrong(ckpt, tied_llama, tmp_path, edit, message):
    good = ckpt.write_gguf(tmp_path / "good.gguf", tied_llama, Q.Q8_0).read_bytes()
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(edit(good))

    with pytest.raises(ValueError, match=message):
        read_gguf_file(bad)
