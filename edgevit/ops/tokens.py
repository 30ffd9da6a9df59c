"""Token pruning (EViT) and merging (ToMe) as pure tensor functions with static output shapes.

Every function takes and returns tensors; the number of tokens out depends only on the number in
and on ``keep``/``r`` (never on the data), so a model using them exports to ONNX, OpenVINO,
CoreML and TensorRT with fixed shapes. No ``scatter_reduce`` (ONNX exporters reject it): merges
are one-hot matrix products.

Shapes: ``x`` is (B, N, C) with ``prefix`` special tokens first (class, distillation, registers),
which are never pruned or merged. ``size`` is (B, N, 1): how many original patches each token stands for.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
              size: torch.Tensor | None = None, weights: bool = True
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Multi-head attention (q, k, v: (B, H, N, D)) -> (output (B, H, N, D), attention (B, H, N, N)).

    With ``size``, ToMe's proportional attention: a token standing for s patches gets log(s) added
    to its logits, so merging does not change how much attention the patches get in total.
    Without ``weights`` the fused kernel runs (``scaled_dot_product_attention``) and no attention
    matrix is returned.
    """
    bias = size.log().transpose(1, 2).unsqueeze(1) if size is not None else None  # (B, 1, 1, N)
    if not weights:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale), None
    logits = (q * scale) @ k.transpose(-2, -1)
    if bias is not None:
        logits = logits + bias
    attn = logits.softmax(dim=-1)
    return attn @ v, attn


def evit_rank(cls_attn: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """EViT's ranking, computed once per block (one TopK): ``cls_attn`` (B, N - prefix) is the class
    token's attention to each patch token, averaged over heads. Returns the indices of the ``keep``
    most attended patch tokens (B, keep, in attention order), of the rest (B, N - prefix - keep) and
    the rest's attention (B, N - prefix - keep, 1), which weights their fused token."""
    order = cls_attn.topk(cls_attn.shape[1], dim=1).indices  # every token, most attended first
    rest = order[:, keep:]
    return order[:, :keep], rest, cls_attn.gather(1, rest).unsqueeze(-1)


def take_tokens(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``t`` (B, N, C) at token indices ``idx`` (B, K): (B, K, C), as one row gather of the flattened
    tokens (ONNX Gather) rather than ``gather`` with an index expanded over C (GatherElements), which
    OpenVINO runs as a reference kernel after broadcasting the index. The row offsets (0, n, 2n, ...) come
    from one ``arange`` up to the flattened size, read off the flattened tensor, with no arithmetic of
    ours: ``b * n`` on shapes is Python in eager mode but an op when traced for ONNX (which shifts NNCF's
    numbering of QAT ops), PT2E's prepare makes a Python factor a float constant, and LiteRT's quantizer
    observes any mul. (Indexing by (batch, token) pairs leaves ONNX a runtime-computed shape, which
    keeps ONNX Runtime from fusing the attention after it.)"""
    flat = t.reshape(-1, t.shape[-1])
    offsets = torch.arange(0, flat.shape[0], t.shape[1], device=idx.device, dtype=idx.dtype)  # (B,)
    return flat[idx + offsets.unsqueeze(1)]


def evit_select(t: torch.Tensor, prefix: int, kept: torch.Tensor, rest: torch.Tensor,
                w_rest: torch.Tensor | None = None) -> torch.Tensor:
    """A per-token tensor ``t`` (B, N, C) after EViT's ranking: (B, prefix + keep + 1, C) = [prefix,
    kept, fused]. The fused token is the ``w_rest``-weighted mean of the pruned ones, or their sum
    without weights (token sizes)."""
    patches = t[:, prefix:]
    picked, pruned = take_tokens(patches, kept), take_tokens(patches, rest)
    if w_rest is None:
        fused = pruned.sum(1, keepdim=True)
    else:  # the pruned weights summed directly: no cancellation
        fused = (w_rest * pruned).sum(1, keepdim=True) / w_rest.sum(1, keepdim=True).clamp_min(1e-12)
    return torch.cat([t[:, :prefix], picked, fused], dim=1)


def evit_prune(x: torch.Tensor, cls_attn: torch.Tensor, keep: int, prefix: int, size: torch.Tensor | None = None,
               metric: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """EViT (Liang et al., 2022): keep the ``keep`` patch tokens the class token attends to most, fuse the
    rest into one. One ranking orders ``x``, the token ``size`` (the fused token's: the pruned sizes'
    sum) and the ``metric`` a merge after it matches by (fused like ``x``): (x, size, metric), each
    [prefix, kept (in attention order), fused]."""
    kept, rest, w_rest = evit_rank(cls_attn, keep)
    return (evit_select(x, prefix, kept, rest, w_rest),
            None if size is None else evit_select(size, prefix, kept, rest),
            None if metric is None else evit_select(metric, prefix, kept, rest, w_rest))


def evit_keep(x: torch.Tensor, cls_attn: torch.Tensor, keep: int, prefix: int) -> torch.Tensor:
    """:func:`evit_prune` of ``x`` alone: (B, prefix + keep + 1, C) = [prefix, kept, fused]."""
    return evit_prune(x, cls_attn, keep, prefix)[0]


def bipartite_merge(x: torch.Tensor, size: torch.Tensor, metric: torch.Tensor, r: int,
                    prefix: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ToMe's bipartite soft matching (Bolya et al., 2023), written from the paper.

    Patch tokens alternate into sets A (even) and B (odd); each A token's most similar B token by
    cosine similarity of ``metric`` (the keys, averaged over heads) is its match; the ``r`` best
    matched A tokens are merged into their B tokens by a size-weighted mean. Output has N - r tokens:
    [prefix, unmerged A (in similarity order), B].
    """
    if r <= 0:
        return x, size
    a_idx, b_idx = slice(prefix, None, 2), slice(prefix + 1, None, 2)
    m = F.normalize(metric, dim=-1)
    scores = m[:, a_idx] @ m[:, b_idx].transpose(1, 2)  # (B, Na, Nb)
    best, match = scores.max(dim=-1)  # (B, Na)
    order = best.topk(best.shape[-1], dim=-1).indices  # a full sort as topk: ExecuTorch's runtime has no sort
    src, keep = order[:, :r], order[:, r:]  # merged away / unmerged A tokens
    dst = match.gather(1, src)  # (B, r): the B token each merged A token joins
    weighted = x * size
    a, b = weighted[:, a_idx], weighted[:, b_idx]
    sa, sb = size[:, a_idx], size[:, b_idx]
    one_hot = (dst.unsqueeze(-1) == torch.arange(b.shape[1], device=x.device)).to(x.dtype)  # (B, r, Nb)
    b = b + one_hot.transpose(1, 2) @ take_tokens(a, src)
    sb = sb + one_hot.transpose(1, 2) @ take_tokens(sa, src)
    a, sa = take_tokens(a, keep), take_tokens(sa, keep)
    merged_size = torch.cat([size[:, :prefix], sa, sb], dim=1)
    merged = torch.cat([weighted[:, :prefix], a, b], dim=1) / merged_size
    return merged, merged_size
