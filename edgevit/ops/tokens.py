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


def evit_keep(x: torch.Tensor, cls_attn: torch.Tensor, keep: int, prefix: int) -> torch.Tensor:
    """EViT: keep the ``keep`` patch tokens the class token attends to most, fuse the rest into one.

    ``cls_attn`` (B, N - prefix) is the class token's attention to each patch token, averaged over
    heads. Output: (B, prefix + keep + 1, C) = [prefix, kept (in attention order), fused], the
    fused token being the attention-weighted mean of the pruned tokens.
    """
    patches = x[:, prefix:]
    c = x.shape[-1]
    order = cls_attn.topk(patches.shape[1], dim=1).indices  # every token, most attended first
    kept = patches.gather(1, order[:, :keep].unsqueeze(-1).expand(-1, -1, c))
    rest = patches.gather(1, order[:, keep:].unsqueeze(-1).expand(-1, -1, c))
    w_rest = cls_attn.gather(1, order[:, keep:]).unsqueeze(-1)  # summed directly: no cancellation
    fused = (w_rest * rest).sum(1, keepdim=True) / w_rest.sum(1, keepdim=True).clamp_min(1e-12)
    return torch.cat([x[:, :prefix], kept, fused], dim=1)


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
    order = best.argsort(dim=-1, descending=True)
    src, keep = order[:, :r], order[:, r:]  # merged away / unmerged A tokens
    dst = match.gather(1, src)  # (B, r): the B token each merged A token joins
    weighted = x * size
    a, b = weighted[:, a_idx], weighted[:, b_idx]
    sa, sb = size[:, a_idx], size[:, b_idx]
    c = x.shape[-1]
    one_hot = (dst.unsqueeze(-1) == torch.arange(b.shape[1], device=x.device)).to(x.dtype)  # (B, r, Nb)
    b = b + one_hot.transpose(1, 2) @ a.gather(1, src.unsqueeze(-1).expand(-1, -1, c))
    sb = sb + one_hot.transpose(1, 2) @ sa.gather(1, src.unsqueeze(-1))
    a = a.gather(1, keep.unsqueeze(-1).expand(-1, -1, c))
    sa = sa.gather(1, keep.unsqueeze(-1))
    merged_size = torch.cat([size[:, :prefix], sa, sb], dim=1)
    merged = torch.cat([weighted[:, :prefix], a, b], dim=1) / merged_size
    return merged, merged_size


def evit_keep_size(size: torch.Tensor, cls_attn: torch.Tensor, keep: int, prefix: int) -> torch.Tensor:
    """The token sizes after :func:`evit_keep` (same order): kept sizes, then the fused token's,
    the sum of the pruned ones. Used when EViT follows ToMe merging in one model."""
    patches = size[:, prefix:]
    order = cls_attn.topk(patches.shape[1], dim=1).indices
    kept = patches.gather(1, order[:, :keep].unsqueeze(-1))
    fused = patches.gather(1, order[:, keep:].unsqueeze(-1)).sum(1, keepdim=True)
    return torch.cat([size[:, :prefix], kept, fused], dim=1)


def token_plan(n_patches: int, depth: int, keep_rate: float | None = None, locations: list[int] | None = None,
               r: int = 0) -> tuple[list[int | None], list[int]]:
    """The composed plan of ToMe merging (``r`` per block) and EViT pruning (``keep_rate`` at
    ``locations``): (patch tokens kept after each block or None, tokens merged in each block).
    Within a block, pruning comes first (it ranks tokens by that block's attention). ToMe merges at
    most half the patch tokens of a block: a larger ``r`` raises ValueError naming the block."""
    import math

    keep: list[int | None] = []
    merge: list[int] = []
    n = n_patches
    for i in range(depth):
        k = max(1, math.ceil(keep_rate * n)) if keep_rate is not None else n
        if keep_rate is not None and i in (locations or ()) and k < n:
            keep.append(k)
            n = k + 1
        else:
            keep.append(None)
        if r and r > n // 2:
            raise ValueError(f"r={r} is more than block {i} allows: it has {n} patch tokens, so at most {n // 2} "
                             f"can merge (ToMe merges half the tokens at most per block)")
        merge.append(r)
        n -= r
    return keep, merge
