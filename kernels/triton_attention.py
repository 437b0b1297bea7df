"""Triton kernel: causal paged attention over a flat mixed batch.

One "unified" kernel serves every kind of sequence in a step (decodes, plain prefills,
prefill chunks continuing a cached prefix), the shape of vLLM's triton unified attention.
Why one kernel rather than a prefill/decode pair: the scheduler mixes both in every step,
and a pair needs the batch split by query length, which either costs a device-to-host
sync per step or a reordering contract with the model runner. Here the grid is sized from
host integers alone (``num_tokens`` and ``num_seqs``) and each program finds its own
sequence on the device. What a pair would buy is split-K for long decodes (many programs
per sequence); a decode-only segmented variant can be added beside this kernel if
profiling shows long-context decode under-filling the GPU.

The grid is (query blocks, kv heads). A program owns ``BLOCK_Q`` consecutive query tokens
of one sequence times the ``GROUP`` query heads that share one kv head (GQA), i.e.
``BLOCK_Q * GROUP`` rows of a ``BLOCK_M``-row Q tile, so every K/V tile read from the
cache serves the whole group. It walks the sequence's context in ``TILE_N``-token tiles through the block
table (a tile may span several cache blocks, so block size and tile size are independent)
with an online softmax accumulated in float32.

An fp8 cache is read as its bytes and widened with integer operations (``triton_cache``
says why): each K/V tile becomes float16 and then the query's dtype, exactly, before ``tl.dot``;
the key scale is folded into ``qk_scale`` and the value scale into ``out_scale``.

Leaf code: imports neither ``fw.core`` nor ``fw.plugins``, and importing it touches no GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fw.kernels.triton_cache import FP8_FORMATS, _check_scales, _fp8_to_float16, fp8_format, fp16_view_factor

_LOG2E = 1.4426950408889634
# tl.dot needs every dimension >= 16 on GPUs; smaller tiles are padded and masked.
_MIN_DOT_DIM = 16
_TILE_N = 32
_Q_TILE_BYTES = 16 * 1024


@triton.jit
def _find_sequence(query_start_loc_ptr, q_block, num_seqs, BLOCK_Q: tl.constexpr):
    """The sequence owning global query block ``q_block``: binary search over block starts.

    Sequence s owns blocks from ``query_start_loc[s] // BLOCK_Q + s`` on; that start is
    non-decreasing in s and leaves each sequence room for ceil(query_len / BLOCK_Q) blocks.
    """
    lo: tl.int32 = 0
    hi = num_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        first_block = tl.load(query_start_loc_ptr + mid) // BLOCK_Q + mid
        if first_block <= q_block:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@triton.jit
def _paged_attention_kernel(
    out_ptr,  # [num_tokens, num_heads, head_dim]
    query_ptr,  # [num_tokens, num_heads, head_dim]
    key_cache_ptr,  # [num_blocks, block_size, num_kv_heads, head_dim]
    value_cache_ptr,  # same shape and strides as key_cache
    query_start_loc_ptr,  # [num_seqs + 1] int32
    seq_lens_ptr,  # [num_seqs] int32
    block_tables_ptr,  # [num_seqs, max_num_blocks] int32
    num_seqs,
    qk_scale,  # softmax scale * log2(e) (the softmax runs in base 2) * an fp8 cache's key scale
    out_scale,  # an fp8 cache's value scale; 1.0 otherwise
    query_stride_token,
    query_stride_head,
    out_stride_token,
    out_stride_head,
    cache_stride_block,
    cache_stride_slot,
    cache_stride_head,
    block_table_stride,
    GROUP: tl.constexpr,  # query heads per kv head
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PADDED: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,  # cache block size
    BLOCK_Q: tl.constexpr,  # query tokens per program
    BLOCK_M: tl.constexpr,  # rows of Q per program, >= BLOCK_Q * GROUP, a power of two
    TILE_N: tl.constexpr,  # context tokens per step of the online softmax
    SLIDING_WINDOW: tl.constexpr,  # 0 = full causal attention
    DOT_PRECISION: tl.constexpr,  # "ieee" for float32 (not TF32) so results match the reference; None = default
    FP8_MANTISSA_BITS: tl.constexpr,  # 0: the cache is in the query's dtype; 3 / 2: fp8 e4m3 / e5m2 bytes
):
    q_block = tl.program_id(0)
    kv_head = tl.program_id(1)

    seq = _find_sequence(query_start_loc_ptr, q_block, num_seqs, BLOCK_Q)
    query_start = tl.load(query_start_loc_ptr + seq)
    query_len = tl.load(query_start_loc_ptr + seq + 1) - query_start
    local_block = q_block - (query_start // BLOCK_Q + seq)
    if local_block * BLOCK_Q >= query_len:
        # The grid is an upper bound on the number of query blocks; this one is spare.
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    context_len = seq_len - query_len  # tokens cached before this step's queries

    # Row r of the Q tile is query token r // GROUP of this block, head r % GROUP of the group.
    rows = tl.arange(0, BLOCK_M)
    query_index = local_block * BLOCK_Q + rows // GROUP
    head = kv_head * GROUP + rows % GROUP
    # Rows past BLOCK_Q * GROUP (when GROUP is not a power of two) would alias the next
    # block's first token with too short a context, racing with that block's store.
    row_mask = (rows < BLOCK_Q * GROUP) & (query_index < query_len)
    query_pos = context_len + query_index  # absolute position in the sequence
    dims = tl.arange(0, HEAD_DIM_PADDED)
    dim_mask = dims < HEAD_DIM

    token = (query_start + query_index).to(tl.int64)
    q_offsets = token[:, None] * query_stride_token + head[:, None] * query_stride_head + dims[None, :]
    q = tl.load(query_ptr + q_offsets, mask=row_mask[:, None] & dim_mask[None, :], other=0.0)

    m = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running row max (base 2)
    l = tl.zeros([BLOCK_M], dtype=tl.float32)  # running row sum of exp2
    acc = tl.zeros([BLOCK_M, HEAD_DIM_PADDED], dtype=tl.float32)

    # Keys this block needs: up to its last query's position; with a window, from the
    # first query's oldest visible key. Tiles outside that range are never read.
    last_query = tl.minimum((local_block + 1) * BLOCK_Q, query_len) - 1
    kv_end = context_len + last_query + 1
    kv_start = 0
    if SLIDING_WINDOW > 0:
        kv_start = tl.maximum(context_len + local_block * BLOCK_Q - SLIDING_WINDOW + 1, 0)
    block_table_row = block_tables_ptr + seq.to(tl.int64) * block_table_stride
    kv_head_offset = kv_head * cache_stride_head

    for tile in range(kv_start // TILE_N, tl.cdiv(kv_end, TILE_N)):
        pos = tile * TILE_N + tl.arange(0, TILE_N)
        pos_mask = pos < kv_end
        # Positions past kv_end are never loaded: their block-table entries and cache slots
        # may be unused (partial last block) and hold anything.
        block = tl.load(block_table_row + pos // BLOCK_SIZE, mask=pos_mask, other=0).to(tl.int64)
        slot_offset = block * cache_stride_block + (pos % BLOCK_SIZE) * cache_stride_slot + kv_head_offset
        k = tl.load(  # [HEAD_DIM_PADDED, TILE_N]: K already transposed for Q @ K
            key_cache_ptr + slot_offset[None, :] + dims[:, None],
            mask=dim_mask[:, None] & pos_mask[None, :],
            other=0.0,
        )
        v = tl.load(  # [TILE_N, HEAD_DIM_PADDED]
            value_cache_ptr + slot_offset[:, None] + dims[None, :],
            mask=pos_mask[:, None] & dim_mask[None, :],
            other=0.0,
        )
        if FP8_MANTISSA_BITS > 0:  # exact: every fp8 value is a float16, bfloat16 and float32 value
            k = _fp8_to_float16(k, FP8_MANTISSA_BITS).to(q.dtype)
            v = _fp8_to_float16(v, FP8_MANTISSA_BITS).to(q.dtype)

        scores = tl.dot(q, k, input_precision=DOT_PRECISION) * qk_scale  # [BLOCK_M, TILE_N]
        visible = row_mask[:, None] & (pos[None, :] <= query_pos[:, None])
        if SLIDING_WINDOW > 0:
            visible = visible & (pos[None, :] > query_pos[:, None] - SLIDING_WINDOW)
        scores = tl.where(visible, scores, float("-inf"))

        # Online softmax. A row may see nothing in this tile (or at all, if it is padding):
        # subtract 0 instead of -inf there so exp2 gives 0, not NaN.
        m_new = tl.maximum(m, tl.max(scores, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m - m_safe)
        p = tl.exp2(scores - m_safe[:, None])
        l = l * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m = m_new

    acc = acc * (out_scale / tl.where(l == 0.0, 1.0, l))[:, None]  # l is 0 only in padding rows, never stored
    out_offsets = token[:, None] * out_stride_token + head[:, None] * out_stride_head + dims[None, :]
    tl.store(out_ptr + out_offsets, acc.to(out_ptr.dtype.element_ty), mask=row_mask[:, None] & dim_mask[None, :])


def paged_attention(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float,
    max_query_len: int,
    sliding_window: int | None = None,
    out: torch.Tensor | None = None,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> torch.Tensor:
    """Causal attention of each sequence's new tokens over its cached context.

    query: [num_tokens, num_heads, head_dim] (last dim contiguous) -> [num_tokens, num_heads, head_dim]
    kv_cache: [2, num_blocks, block_size, num_kv_heads, head_dim], same dtype as query or fp8
    (keys / ``k_scale`` and values / ``v_scale``, as ``triton_cache.write_kv`` stores them),
    already holding this step's keys and values.
    query_start_loc: [num_seqs + 1] int32; seq_lens: [num_seqs] int32;
    block_tables: [num_seqs, max_num_blocks] int32. The last ``query_len`` of a
    sequence's ``seq_len`` tokens are its queries (see ``reference.paged_attention_ref``).
    ``max_query_len`` (a host int, so no device sync) picks the tile shape; with
    ``sliding_window`` a query at position p sees keys in ``(p - sliding_window, p]``.
    """
    _check_paged_attention_args(query, kv_cache, query_start_loc, seq_lens, block_tables, sliding_window, out)
    fmt = fp8_format(kv_cache.dtype)
    _check_scales(fmt, k_scale, v_scale)
    num_tokens, num_heads, head_dim = query.shape
    num_kv_heads = kv_cache.shape[3]
    num_seqs = seq_lens.shape[0]
    if out is None:
        out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    if num_tokens == 0 or num_seqs == 0:
        return out

    group = num_heads // num_kv_heads
    head_dim_padded = max(_MIN_DOT_DIM, triton.next_power_of_2(head_dim))
    # Decode-only steps want the smallest tile (one token x the head group); prefills
    # reuse each K/V tile across more query tokens, up to a 16 KiB Q tile. Tile sizes and
    # warps were chosen from ptxas register/spill reports (sm_80, sm_90), not GPU timings.
    min_rows = _MIN_DOT_DIM
    if max_query_len > 1:
        min_rows = min(64, max(_MIN_DOT_DIM, _Q_TILE_BYTES // (head_dim_padded * query.element_size())))
    block_m = max(min_rows, triton.next_power_of_2(group))
    block_q = block_m // group
    q_tile_bytes = block_m * head_dim_padded * query.element_size()
    # Upper bound on query blocks without reading query lengths on the host (see _find_sequence).
    num_q_blocks = num_tokens // block_q + num_seqs
    if fmt.mantissa_bits:
        kv_cache = kv_cache.view(torch.uint8)
    view_factor = fp16_view_factor(fmt)
    key_cache, value_cache = kv_cache[0], kv_cache[1]
    _paged_attention_kernel[(num_q_blocks, num_kv_heads)](
        out,
        query,
        key_cache,
        value_cache,
        query_start_loc,
        seq_lens,
        block_tables,
        num_seqs,
        scale * _LOG2E * k_scale * view_factor,
        v_scale * view_factor,
        query.stride(0),
        query.stride(1),
        out.stride(0),
        out.stride(1),
        key_cache.stride(0),
        key_cache.stride(1),
        key_cache.stride(2),
        block_tables.stride(0),
        GROUP=group,
        HEAD_DIM=head_dim,
        HEAD_DIM_PADDED=head_dim_padded,
        BLOCK_SIZE=kv_cache.shape[2],
        BLOCK_Q=block_q,
        BLOCK_M=block_m,
        TILE_N=_TILE_N,
        SLIDING_WINDOW=sliding_window or 0,
        DOT_PRECISION="ieee" if query.dtype == torch.float32 else None,
        FP8_MANTISSA_BITS=fmt.mantissa_bits,
        # From a 16 KiB Q tile on, 4 warps spill registers (Q, the fp32 accumulator, K/V tiles).
        num_warps=8 if q_tile_bytes >= _Q_TILE_BYTES else 4,
    )
    return out


def _check_paged_attention_args(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    sliding_window: int | None,
    out: torch.Tensor | None,
) -> None:
    if query.dim() != 3:
        raise ValueError(f"query must be [num_tokens, num_heads, head_dim]; got shape {tuple(query.shape)}")
    if kv_cache.dim() != 5 or kv_cache.shape[0] != 2 or kv_cache.shape[4] != query.shape[2]:
        raise ValueError(
            f"kv_cache must be [2, num_blocks, block_size, num_kv_heads, {query.shape[2]}]; got {tuple(kv_cache.shape)}"
        )
    num_heads, num_kv_heads = query.shape[1], kv_cache.shape[3]
    if num_heads % num_kv_heads != 0:
        raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
    if query.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"query must be float16, bfloat16 or float32; got {query.dtype}")
    if kv_cache.dtype != query.dtype and kv_cache.dtype not in FP8_FORMATS:
        raise ValueError(f"kv_cache dtype ({kv_cache.dtype}) must match query dtype ({query.dtype}) or be fp8")
    num_seqs = seq_lens.shape[0] if seq_lens.dim() == 1 else -1
    for name, tensor, shape in (
        ("query_start_loc", query_start_loc, (num_seqs + 1,)),
        ("seq_lens", seq_lens, (num_seqs,)),
    ):
        if tensor.dtype != torch.int32 or tensor.shape != shape or not tensor.is_contiguous():
            raise ValueError(
                f"{name} must be a contiguous int32 tensor of shape {list(shape)}; "
                f"got {tensor.dtype} {tuple(tensor.shape)}"
            )
    if block_tables.dtype != torch.int32 or block_tables.dim() != 2 or block_tables.shape[0] != num_seqs:
        raise ValueError(
            f"block_tables must be int32 [{num_seqs}, max_num_blocks]; "
            f"got {block_tables.dtype} {tuple(block_tables.shape)}"
        )
    if block_tables.stride(1) != 1:
        raise ValueError("block_tables must be contiguous in its last dimension")
    for name, tensor in (("query", query), ("kv_cache", kv_cache)):
        if tensor.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in its last (head_dim) dimension")
    if out is not None and (out.shape != query.shape or out.dtype != query.dtype or out.stride(-1) != 1):
        raise ValueError(f"out must be a {query.dtype} tensor of shape {tuple(query.shape)}, last dim contiguous")
    if sliding_window is not None and sliding_window < 1:
        raise ValueError(f"sliding_window must be a positive number of tokens or None; got {sliding_window}")
    tensors = [query, kv_cache, query_start_loc, seq_lens, block_tables] + ([out] if out is not None else [])
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        raise ValueError(f"all attention inputs must be on one device; got {sorted(map(str, devices))}")
