"""Batched window attention for Qwen2.5-VL's vision tower on hosts without flash-attn.

Without flash-attn, transformers' ``Qwen2_5_VLVisionAttention`` runs one SDPA call per attention window: 12
windows a 252x364 frame, up to 16 frames a dialogue, 28 windowed blocks, in forward, recompute and backward. The
SFT step of a 3B is then bound by launching ops, not by arithmetic. Windows of one length can share a call, and a
frame set of one size has only a few lengths, so this module groups them: one batched SDPA call per distinct
window length, the same arithmetic per window. ``benchmarks/sft_step.py`` on an H200 (random 3B, real-size
frames): 113,558 -> 80,370 aten ops a dialogue, 1.55x faster (docs/results/realsize_3b/run3/sft_step/).

transformers passes a layer's window boundaries (``cu_seq_lens_q``) only to attention implementations whose
name contains "flash"; the registered name carries it for that reason alone. It is set on the vision config of
an already loaded model (loading under that name would look for a flash-attn kernel), so it serves our own
loops (SFT); verl builds its actor itself and keeps transformers' per-window path.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

logger = logging.getLogger(__name__)

#: Registered attention implementation; "flash" makes transformers hand over the window boundaries.
NAME = "flash_style_batched_sdpa"


def batched_window_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    cu_seq_lens_q: torch.Tensor | None = None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention within each ``[cu[i], cu[i+1])`` chunk of a ``(1, heads, seq, dim)`` sequence.

    Returns ``(1, seq, heads, dim)`` like transformers' SDPA integration. Without chunk boundaries it is
    transformers' SDPA.
    """
    if cu_seq_lens_q is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    if query.shape[0] != 1:
        raise ValueError(f"window attention expects one packed sequence, got batch {query.shape[0]}")
    bounds = cu_seq_lens_q.to("cpu", torch.long)
    starts, lengths = bounds[:-1], bounds[1:] - bounds[:-1]
    out = torch.empty_like(query[0])  # (heads, seq, dim)
    for length in lengths.unique().tolist():
        if length == 0:
            continue
        first = starts[lengths == length].to(query.device)
        index = (first[:, None] + torch.arange(length, device=query.device)).reshape(-1)
        # (heads, windows*length, dim) -> (windows, heads, length, dim)
        q, k, v = (tensor[0][:, index].unflatten(1, (-1, length)).transpose(0, 1) for tensor in (query, key, value))
        attended = torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scaling)
        out[:, index] = attended.transpose(0, 1).flatten(1, 2)
    return out.transpose(0, 1).unsqueeze(0), None


AttentionInterface.register(NAME, batched_window_attention)


def batch_vision_windows(model: torch.nn.Module) -> bool:
    """Switch a loaded Qwen2.5-VL's vision tower to batched windows; False (and unchanged) if it runs flash-attn.

    Only the vision config changes: the language model keeps its attention implementation.
    """
    vision = model.config.vision_config
    current = vision._attn_implementation
    if current is not None and "flash" in current:
        logger.info("vision tower already runs %s; windows left to it", current)
        return False
    vision._attn_implementation = NAME
    logger.info("vision tower: %s -> one SDPA call per window length (%s)", current, NAME)
    return True
