"""LiT (locked-image text tuning, Zhai et al. 2022) on the CPU: a trained image tower is locked and a
small text tower (open_clip's text transformer) learns, contrastively, to place captions built from
class names × prompt templates beside the images of their class.

The locked tower never changes, so its features are computed once (:func:`tower_features`, optionally
with the horizontally flipped image as a second view) and each step runs the text tower only. Captions
made from class names repeat: many images of a batch share a class and so a caption, which is why the
loss (:func:`multi_positive_infonce`) counts every same-class caption as a positive, never as a negative.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..data import make_loader, split_indices
from ..errors import OptionError
from ..models.clip import template_mean
from ..progress import progress_bar

__all__ = ["LitConfig", "multi_positive_infonce", "tower_features", "caption_tokens", "class_embeddings",
           "zeroshot_top1", "fit_lit", "load_tokenizer", "context_for",
           "MAX_LOGIT_SCALE"]

MAX_LOGIT_SCALE = math.log(100.0)  # open_clip clamps exp(logit_scale) at 100
MAX_CONTEXT = 77  # CLIP's context length: the BPE tokenizer's usual limit


@dataclass
class LitConfig:
    """The LiT recipe. Defaults: about 1 minute of tuning (under 2 minutes for the whole run) on 2 CPU cores
    for the CIFAR-10 subset (4,660 images, DeiT-Ti tower)."""

    steps: int = 300  # optimizer steps
    batch_size: int = 512  # image features per step (cheap: the tower is precomputed)
    text_batch: int = 80  # captions encoded per step: k templates for each class in the image batch
    lr: float = 1e-3  # AdamW peak learning rate (text tower, logit scale, optional image projection)
    weight_decay: float = 0.01  # on matrices only (not on biases, norms, the logit scale)
    warmup_steps: int = 30  # linear warm-up, then cosine to 0
    text_width: int = 256
    text_layers: int = 4
    text_heads: int = 4
    context_length: int | None = None  # tokens per caption; None: the longest caption, rounded up to 8 (min 16)
    templates: str | list[str] = "openai"  # prompt templates (edgevit.models.prompts): captions and evaluation
    flip: bool = False  # the horizontally flipped image as a second view (a second pass of the tower)
    image_proj: bool = False  # a trainable linear image projection after the locked tower (LiT has none)
    holdout: float = 0.1  # fraction of the training images kept out for the history's zero-shot top-1 (0: none)
    eval_every: int = 50  # steps between two history rows
    seed: int = 0
    threads: int | None = None  # torch CPU threads (None: torch's default)

    def check(self) -> None:
        """Refuse values that cannot work, before any work."""
        positive = {"steps": self.steps, "batch_size": self.batch_size, "text_batch": self.text_batch,
                    "text_width": self.text_width,
                    "text_layers": self.text_layers, "text_heads": self.text_heads, "eval_every": self.eval_every}
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise OptionError(f"LiT {name} must be a positive integer, got {value!r}", f"pass {name} >= 1")
        if self.batch_size < 2:
            raise OptionError(f"LiT batch_size {self.batch_size} leaves no negatives to contrast",
                              "pass batch_size >= 2 (LiT uses hundreds)")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise OptionError(f"LiT lr must be a positive number, got {self.lr}", "e.g. lr 1e-3")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise OptionError(f"LiT weight_decay must be >= 0, got {self.weight_decay}", "e.g. weight_decay 0.01")
        if not 0 <= self.warmup_steps < self.steps:
            raise OptionError(f"LiT warmup_steps ({self.warmup_steps}) must be in [0, steps={self.steps})",
                              f"pass warmup_steps of about {max(0, self.steps // 10)}")
        if self.text_width % self.text_heads:
            raise OptionError(f"LiT text_width {self.text_width} is not a multiple of text_heads {self.text_heads}",
                              "pick a width divisible by the number of heads (e.g. 256 with 4 heads)")
        if self.context_length is not None and not 8 <= self.context_length <= MAX_CONTEXT:
            raise OptionError(f"LiT context_length must be in [8, 77] tokens, got {self.context_length}",
                              "captions are short: 32 is plenty")
        if not 0 <= self.holdout < 0.5:
            raise OptionError(f"LiT holdout must be in [0, 0.5), got {self.holdout}", "e.g. 0.1, or 0 for none")
        if self.threads is not None and self.threads < 1:
            raise OptionError(f"LiT threads must be at least 1, got {self.threads}", "leave it out for torch's default")


def multi_positive_infonce(image: torch.Tensor, text: torch.Tensor, image_labels: torch.Tensor,
                           text_labels: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Label-aware symmetric InfoNCE (as UniCL): each row's target spreads evenly over its positives; the
    loss is the KL divergence from that target (cross-entropy less the target's entropy, so 0 is perfect).

    CLIP's loss takes caption *i* as image *i*'s only positive. With captions made from class names,
    a batch of 256 CIFAR images holds ~25 images per class and their captions say the same thing
    ("a photo of a cat."), so CLIP's loss would push a cat image away from the other cat captions.
    Here every caption of the image's class is a positive (and every image of the caption's class, the
    other way), so swapping captions within a class leaves the loss unchanged.

    ``image``, ``text``: unit embeddings [B, D]; labels [B]; ``logit_scale``: the log temperature (used
    as ``exp(min(logit_scale, log 100))``, open_clip's clamp)."""
    logits = logit_scale.clamp(max=MAX_LOGIT_SCALE).exp() * image @ text.T
    pos = (image_labels[:, None] == text_labels[None, :]).to(logits.dtype)

    def ce(lg: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        target = p / p.sum(dim=1, keepdim=True).clamp(min=1.0)
        return (torch.xlogy(target, target) - target * lg.log_softmax(dim=1)).sum(dim=1).mean()

    return 0.5 * (ce(logits, pos) + ce(logits.T, pos.T))


@torch.no_grad()
def tower_features(trunk: nn.Module, ds: Dataset, flip: bool = False, batch_size: int = 128,
                   label: str = "locked tower features") -> tuple[torch.Tensor, torch.Tensor]:
    """(features [N, views, D], labels [N]) of the locked tower over ``ds``; ``flip`` adds the horizontally
    flipped image as a second view. Run once: the tower is frozen."""
    trunk.eval()
    feats, labels = [], []
    with progress_bar(label, len(ds), unit="img") as advance:
        for x, y in make_loader(ds, batch_size):
            views = [trunk(x)] + ([trunk(x.flip(-1))] if flip else [])
            feats.append(torch.stack(views, dim=1).float())
            labels.append(torch.as_tensor(y))
            advance(len(y))
    return torch.cat(feats), torch.cat(labels).long()


def load_tokenizer(context_length: int) -> Callable[[list[str]], torch.Tensor]:
    """open_clip's BPE tokenizer at ``context_length``: the one :func:`edgevit.models.clip.load_two_tower`
    gives the saved LiT model (its config has no hf tokenizer)."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=context_length)


def context_for(classes: tuple[str, ...], templates: tuple[str, ...], wanted: int | None) -> int:
    """The context length the captions need: ``wanted``, checked (no caption may be cut), or with None the
    longest caption (start and end tokens included) rounded up to a multiple of 8, at least 16."""
    texts = [t.replace("{}", c, 1) for c in classes for t in templates]
    longest = int((load_tokenizer(MAX_CONTEXT)(texts) != 0).sum(dim=1).max())
    worst = max(texts, key=len)
    if longest >= MAX_CONTEXT:
        raise OptionError(f"a caption is {longest}+ tokens long (e.g. {worst!r}): longer than CLIP's {MAX_CONTEXT}",
                          "shorten the class names or templates")
    if wanted is not None and wanted < longest:
        raise OptionError(f"context_length {wanted} would cut captions of {longest} tokens (e.g. {worst!r})",
                          f"pass context_length >= {longest}, or leave it out (chosen from the captions)")
    return wanted if wanted is not None else max(16, -(-longest // 8) * 8)


def caption_tokens(tokenizer: Callable[[list[str]], torch.Tensor], classes: tuple[str, ...],
                   templates: tuple[str, ...]) -> torch.Tensor:
    """Every caption tokenised once: [classes, templates, context_length]."""
    texts = [t.replace("{}", c, 1) for c in classes for t in templates]
    return tokenizer(texts).reshape(len(classes), len(templates), -1)


def _captions(y: torch.Tensor, tokens: torch.Tensor, text_batch: int, gen: torch.Generator
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(caption tokens, their labels) for one step: ``text_batch // classes`` distinct templates (at least
    one) for each class of the image batch, so every image and every caption has a positive."""
    cls = torch.unique(y)
    k = min(tokens.shape[1], max(1, text_batch // len(cls)))
    tmpl = torch.rand(len(cls), tokens.shape[1], generator=gen).argsort(dim=1)[:, :k]
    return tokens[cls[:, None], tmpl].reshape(len(cls) * k, -1), cls.repeat_interleave(k)


@torch.no_grad()
def class_embeddings(model: nn.Module, tokens: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """Unit class embeddings [C, D]: each template's embedding normalised, averaged, normalised again
    (open_clip's zero-shot recipe, as :func:`edgevit.models.clip.encode_classes` does)."""
    c, t, n = tokens.shape
    flat = tokens.reshape(c * t, n)
    emb = torch.cat([model.encode_text(flat[i:i + chunk], normalize=True) for i in range(0, len(flat), chunk)])
    return template_mean(emb.reshape(c, t, -1))


@torch.no_grad()
def zeroshot_top1(model: nn.Module, feats: torch.Tensor, labels: torch.Tensor, tokens: torch.Tensor) -> float:
    """Zero-shot top-1 (%) of precomputed tower features (first view) against the classes' captions."""
    was = model.training
    model.eval()
    image = F.normalize(model.visual.head(feats[:, 0]), dim=-1)
    pred = (image @ class_embeddings(model, tokens).T).argmax(dim=1)
    model.train(was)
    model.visual.eval()
    return 100.0 * float((pred == labels).float().mean())


def _optimizer(model: nn.Module, cfg: LitConfig) -> torch.optim.Optimizer:
    decay, plain = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_wd = p.ndim < 2 or "bias" in name or "ln" in name or "logit_scale" in name or "positional" in name
        (plain if no_wd else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": plain, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6,
                             fused=True)  # fused: the 49k-token embedding's update is 8x faster on the CPU


def _schedule(cfg: LitConfig) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


def trainable(model: nn.Module, image_proj: bool) -> list[str]:
    """Lock the image tower (no gradients, eval mode); train the text tower and the logit scale (and the
    image projection with ``image_proj``). Returns the names of the trainable parameters."""
    for name, p in model.named_parameters():
        p.requires_grad = not name.startswith("visual.") or (image_proj and name.startswith("visual.head."))
    model.train()
    model.visual.eval()
    return [n for n, p in model.named_parameters() if p.requires_grad]


def _holdout(labels: torch.Tensor, cfg: LitConfig) -> tuple[np.ndarray, np.ndarray]:
    idx = np.arange(len(labels))
    if not cfg.holdout or len(labels) < 4:
        return idx, idx[:0]
    train, held = split_indices(labels.tolist(), cfg.holdout, cfg.seed)
    return np.asarray(train), np.asarray(held)


def _batches(n: int, size: int, gen: torch.Generator):
    """Index batches of ``min(size, n)`` images, reshuffled whenever an epoch runs out (forever)."""
    size = min(size, n)
    while True:
        perm = torch.randperm(n, generator=gen)
        for pos in range(0, n - size + 1, size):
            yield perm[pos:pos + size]


def _step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, tokens: torch.Tensor, cfg: LitConfig,
          gen: torch.Generator, opt: torch.optim.Optimizer) -> float:
    """One optimizer step on image features ``x`` [B, views, D] (one random view each) and labels ``y``."""
    view = torch.randint(x.shape[1], (len(y),), generator=gen)
    image = F.normalize(model.visual.head(x[torch.arange(len(y)), view]), dim=-1)
    caps, cap_labels = _captions(y, tokens, cfg.text_batch, gen)
    text = model.encode_text(caps, normalize=True)
    loss = multi_positive_infonce(image, text, y, cap_labels, model.logit_scale)
    if not torch.isfinite(loss):
        raise OptionError(f"the LiT loss became {loss.item()}", "lower the lr (e.g. halve it)")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
    return loss.item()


def fit_lit(model: nn.Module, feats: torch.Tensor, labels: torch.Tensor, tokens: torch.Tensor,
            cfg: LitConfig) -> list[dict[str, Any]]:
    """Tune ``model`` (an open_clip CLIP whose ``visual`` is the locked tower) on precomputed tower
    features [N, views, D] and their labels; ``tokens``: the captions [classes, templates, ctx].
    Each step takes ``batch_size`` images (one random view each) and ``text_batch`` captions of their classes.
    Returns the history: one row per ``eval_every`` steps (mean loss, lr, scale, held-out zero-shot top-1)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    gen = torch.Generator().manual_seed(cfg.seed)
    train_idx, held_idx = _holdout(labels, cfg)
    x_all, y_all = feats[train_idx], labels[train_idx]
    trainable(model, cfg.image_proj)
    opt = _optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(cfg))
    history: list[dict[str, Any]] = []
    losses: list[float] = []
    batches, t0 = _batches(len(y_all), cfg.batch_size, gen), time.monotonic()
    with progress_bar("LiT tuning", cfg.steps, unit="step") as advance:
        for step in range(1, cfg.steps + 1):
            b = next(batches)
            lr = opt.param_groups[0]["lr"]
            losses.append(_step(model, x_all[b], y_all[b], tokens, cfg, gen, opt))
            sched.step()
            advance(1, loss=losses[-1])
            if step % cfg.eval_every and step != cfg.steps:
                continue
            row = {"step": step, "epoch": round(step * min(cfg.batch_size, len(y_all)) / len(y_all), 3),
                   "loss": float(np.mean(losses)), "lr": lr, "logit_scale": model.logit_scale.detach().exp().item(),
                   "elapsed_s": round(time.monotonic() - t0, 2)}
            if len(held_idx):
                row["holdout_zeroshot_top1"] = zeroshot_top1(model, feats[held_idx], labels[held_idx], tokens)
            history.append(row)
            losses = []
    model.eval()
    return history
