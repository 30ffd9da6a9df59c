"""DeiT's distillation (Touvron et al., 2021): a frozen teacher guides the student's distillation token.

- ``hard``: ½·CE(class head, labels) + ½·CE(distillation head, teacher argmax)
- ``soft``: (1-α)·CE(class head, labels) + α·τ²·KL(softmax(dist/τ) ‖ softmax(teacher/τ))
- ``none``: the base loss alone (the plain baseline)

At evaluation timm's distilled models average the two heads, which is what export sees.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import CheckpointError, EdgeVitError, ModelError
from ..models import HEAD_MODULES, ModelSpec, create_model, load_state_dict

KINDS = ("none", "soft", "hard")


class DistillationError(EdgeVitError):
    """A teacher/student/data combination that cannot distill."""


class TeacherInput(torch.nn.Module):
    """Re-preprocess the student's batch for a teacher with other normalisation or input size."""

    def __init__(self, student_cfg: dict, teacher_cfg: dict):
        super().__init__()
        self.register_buffer("s_mean", torch.tensor(student_cfg["mean"]).view(1, 3, 1, 1))
        self.register_buffer("s_std", torch.tensor(student_cfg["std"]).view(1, 3, 1, 1))
        self.register_buffer("t_mean", torch.tensor(teacher_cfg["mean"]).view(1, 3, 1, 1))
        self.register_buffer("t_std", torch.tensor(teacher_cfg["std"]).view(1, 3, 1, 1))
        self.size = int(teacher_cfg["input_size"][-1])
        self.same = (list(student_cfg["mean"]) == list(teacher_cfg["mean"])
                     and list(student_cfg["std"]) == list(teacher_cfg["std"])
                     and int(student_cfg["input_size"][-1]) == self.size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same:
            return x
        raw = x * self.s_std + self.s_mean
        if raw.shape[-1] != self.size:
            raw = F.interpolate(raw, size=(self.size, self.size), mode="bicubic", align_corners=False)
        return (raw - self.t_mean) / self.t_std


class DistillationLoss(torch.nn.Module):
    """Wraps the base criterion; ``forward(inputs, outputs, labels)`` as in DeiT's reference code."""

    def __init__(self, base: torch.nn.Module, teacher: torch.nn.Module | None, kind: str = "none",
                 alpha: float = 0.5, tau: float = 1.0, teacher_input: torch.nn.Module | None = None,
                 single_head: bool = False):
        super().__init__()
        if kind not in KINDS:
            raise DistillationError(f"unknown distillation {kind!r}", f"use one of {', '.join(KINDS)}")
        if kind != "none" and teacher is None:
            raise DistillationError(f"--distillation {kind} needs a teacher", "pass --teacher NAME_OR_CHECKPOINT")
        self.base, self.teacher, self.kind, self.alpha, self.tau = base, teacher, kind, alpha, tau
        self.teacher_input = teacher_input or torch.nn.Identity()
        self.single_head = single_head  # classic KD: the one head learns from labels and teacher

    def forward(self, inputs: torch.Tensor, outputs, labels: torch.Tensor) -> torch.Tensor:
        if self.kind == "none":
            return self.base(outputs[0] if isinstance(outputs, tuple) else outputs, labels)
        if not isinstance(outputs, tuple) and self.single_head:
            outputs = (outputs, outputs)
        if not isinstance(outputs, tuple):
            raise DistillationError("the student returned one head while distilling",
                                    "use a student with a distillation token, e.g. deit_tiny_distilled")
        cls_out, dist_out = outputs
        base_loss = self.base(cls_out, labels)
        with torch.no_grad():
            t_out = self.teacher(self.teacher_input(inputs)).float()
        if self.kind == "soft":
            T = self.tau
            kd = F.kl_div(F.log_softmax(dist_out / T, dim=1), F.log_softmax(t_out / T, dim=1),
                          reduction="sum", log_target=True) * (T * T) / dist_out.numel()
        else:
            kd = F.cross_entropy(dist_out, t_out.argmax(dim=1))
        return base_loss * (1 - self.alpha) + kd * self.alpha


def has_distillation_token(model: torch.nn.Module) -> bool:
    return getattr(model, "dist_token", None) is not None and hasattr(model, "set_distilled_training")


def check_student(model: torch.nn.Module, kind: str, name: str) -> None:
    if kind != "none" and not has_distillation_token(model):
        raise DistillationError(
            f"student {name!r} has no distillation token, so --distillation {kind} has no head to train",
            f"use a distilled student (e.g. {name.split('_patch')[0]}_distilled if it exists, deit_tiny_distilled), "
            "or --distillation none")


def load_teacher(name: str, checkpoint: str | None, num_classes: int, img_size: int | None = None,
                 extra: dict | None = None) -> tuple[torch.nn.Module, dict | None]:
    """A frozen teacher in eval mode: any timm/zoo name with hub weights, or a local checkpoint; with
    the preprocessing it was trained with when an edgevit run made it (else None: timm's)."""

    spec = ModelSpec(name=name, checkpoint=checkpoint, pretrained=checkpoint is None,
                     img_size=img_size, extra=dict(extra or {}))
    made_by = _edgevit_run_of(checkpoint)
    if made_by and made_by["model"]["name"] == name:  # trained by edgevit: rebuild it as it was built
        m = made_by["model"]
        spec.img_size, spec.patch_size, spec.extra = m.get("img_size"), m.get("patch_size"), dict(m.get("extra") or {})
    if checkpoint:
        if not Path(checkpoint).is_file():
            raise CheckpointError(f"teacher checkpoint {checkpoint} does not exist", "check --teacher-checkpoint")
        state = load_state_dict(Path(checkpoint))  # its head says how many classes the teacher predicts
        head = next((state[f"{m}.weight"] for m in HEAD_MODULES if f"{m}.weight" in state), None)
        spec.num_classes = int(head.shape[0]) if head is not None else None
    teacher = create_model(spec)
    n = _num_outputs(teacher)
    if n != num_classes:
        raise DistillationError(
            f"teacher {name!r} predicts {n} classes but the data has {num_classes}",
            "fine-tune the teacher on this data first (`edgevit train --model TEACHER --data ...`) "
            "and pass its weights with --teacher-checkpoint")
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval(), (made_by["data_config"] if made_by else None)


def _edgevit_run_of(checkpoint: str | None) -> dict | None:
    """run.json of the edgevit run that wrote ``checkpoint`` (run/model/weights.safetensors), if any."""
    import json

    if not checkpoint:
        return None
    run_json = Path(checkpoint).resolve().parent.parent / "run.json"
    try:
        return json.loads(run_json.read_text()) if run_json.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None


def _num_outputs(model: torch.nn.Module) -> int:
    n = getattr(model, "num_classes", None)
    if n:
        return int(n)
    raise ModelError("cannot tell how many classes the teacher predicts", "use a timm classifier as teacher")
