"""The training engine: DeiT distillation losses, resume, checkpoints, bad inputs, DDP."""
import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_spec, write_image_folder

from edgevit.errors import CheckpointError, DataError
from edgevit.run.training import run_training
from edgevit.train.checkpoint import save_checkpoint
from edgevit.train.distill import DistillationError, DistillationLoss, TeacherInput, check_student
from edgevit.train.engine import TrainConfig, TrainingError

ROOT = Path(__file__).resolve().parents[1]


def _cfg(**kw):
    base = dict(epochs=2, batch_size=64, lr=1e-3, warmup_epochs=1, flip=False)
    base.update(kw)
    return TrainConfig(**base)


class Fixed(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return self.logits


def test_hard_distillation_is_deit_formula():
    torch.manual_seed(0)
    cls, dist, t = torch.randn(4, 5), torch.randn(4, 5), torch.randn(4, 5)
    y = torch.tensor([0, 1, 2, 3])
    loss = DistillationLoss(torch.nn.CrossEntropyLoss(), Fixed(t), "hard", alpha=0.5)(torch.zeros(4), (cls, dist), y)
    want = 0.5 * F.cross_entropy(cls, y) + 0.5 * F.cross_entropy(dist, t.argmax(1))
    assert torch.allclose(loss, want)


def test_soft_distillation_is_deit_formula():
    torch.manual_seed(0)
    cls, dist, t = torch.randn(4, 5), torch.randn(4, 5), torch.randn(4, 5)
    y = torch.tensor([0, 1, 2, 3])
    T, a = 3.0, 0.1
    loss = DistillationLoss(torch.nn.CrossEntropyLoss(), Fixed(t), "soft", alpha=a, tau=T)(None, (cls, dist), y)
    kl = F.kl_div(F.log_softmax(dist / T, 1), F.log_softmax(t / T, 1), reduction="sum", log_target=True)
    want = (1 - a) * F.cross_entropy(cls, y) + a * kl * T * T / dist.numel()
    assert torch.allclose(loss, want)


def test_none_ignores_the_teacher_and_teacher_gets_no_gradient():
    cls = torch.randn(2, 3, requires_grad=True)
    y = torch.tensor([0, 2])
    assert torch.allclose(DistillationLoss(torch.nn.CrossEntropyLoss(), None, "none")(None, cls, y),
                          F.cross_entropy(cls, y))
    teacher = torch.nn.Linear(3, 3)
    loss = DistillationLoss(torch.nn.CrossEntropyLoss(), teacher, "hard")(torch.randn(2, 3), (cls, cls * 2), y)
    loss.backward()
    assert teacher.weight.grad is None and cls.grad is not None


def test_teacher_input_renormalises_and_resizes():
    s = {"mean": [0.5] * 3, "std": [0.25] * 3, "input_size": [3, 32, 32]}
    t = {"mean": [0.0] * 3, "std": [1.0] * 3, "input_size": [3, 64, 64]}
    x = torch.full((1, 3, 32, 32), 2.0)  # raw value 0.5 + 2*0.25 = 1.0
    out = TeacherInput(s, t)(x)
    assert out.shape == (1, 3, 64, 64) and torch.allclose(out, torch.ones_like(out), atol=1e-5)
    assert TeacherInput(s, s)(x) is x


def test_student_without_distillation_token_asked_for_hard():
    from edgevit.models import create_model

    with pytest.raises(DistillationError, match="no distillation token") as e:
        check_student(create_model(tiny_spec()), "hard", "deit_tiny")
    assert "deit_tiny_distilled" in e.value.fix


def test_teacher_with_other_class_count(tmp_path):
    five = write_image_folder(tmp_path / "five", classes=5, per_class=8)
    run_training(tiny_spec(num_classes=5), _cfg(epochs=1, batch_size=16), str(five), tmp_path / "teacher")
    ckpt = tmp_path / "teacher" / "model" / "weights.safetensors"
    cfg = _cfg(distillation="hard", teacher="deit_tiny", teacher_checkpoint=str(ckpt))
    spec = tiny_spec(name="deit_tiny_distilled")
    with pytest.raises(DistillationError, match="predicts 5 classes but the data has 10"):
        run_training(spec, cfg, "digits", tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_missing_data_split(tmp_path):
    write_image_folder(tmp_path / "ds" / "train")
    with pytest.raises(DataError, match="has no val split"):
        run_training(tiny_spec(num_classes=3), _cfg(), str(tmp_path / "ds"), tmp_path / "run")


def _sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_resume_reaches_the_same_weights_bitwise(tmp_path, monkeypatch):
    """Stopped after epoch 1 of 3 and resumed == uninterrupted, bit for bit (CPU, fixed seeds)."""
    cfg = _cfg(epochs=3, ema_decay=0.9, mixup=0.5, drop_path=0.1)
    full, _ = run_training(tiny_spec(), cfg, "digits", tmp_path / "full")

    import edgevit.train.engine as engine

    real = engine._one_epoch

    def stop_at_second(p, c, epoch, show):
        if epoch == 1:
            raise KeyboardInterrupt  # killed mid-epoch 2
        return real(p, c, epoch, show)

    monkeypatch.setattr(engine, "_one_epoch", stop_at_second)
    with pytest.raises(KeyboardInterrupt):
        run_training(tiny_spec(), cfg, "digits", tmp_path / "cut")
    state = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 0  # the finished epoch survived the kill
    monkeypatch.setattr(engine, "_one_epoch", real)
    resumed, _ = run_training(tiny_spec(), cfg, "digits", tmp_path / "cut", resume=True)
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    h_full = (tmp_path / "full" / "model" / "history.jsonl").read_text().splitlines()
    h_cut = (tmp_path / "cut" / "model" / "history.jsonl").read_text().splitlines()
    def strip(rows):
        return [{k: v for k, v in eval(r.replace("null", "None")).items() if k != "images_per_s"} for r in rows]
    assert strip(h_full) == strip(h_cut) and len(h_full) == 3


def test_resume_from_corrupt_or_foreign_checkpoint(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="cannot be read"):
        run_training(tiny_spec(), _cfg(), "digits", run, resume=True)
    torch.save({"model": {}}, last)  # a plain checkpoint, not a training one
    with pytest.raises(CheckpointError, match="not an edgevit training checkpoint"):
        run_training(tiny_spec(), _cfg(), "digits", run, resume=True)
    torch.save({"format": "edgevit-train", "model_name": "deit_small"}, last)
    with pytest.raises(CheckpointError, match="while training 'deit_small'"):
        run_training(tiny_spec(), _cfg(), "digits", run, resume=True)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        run_training(tiny_spec(), _cfg(), "digits", tmp_path / "none", resume=True)


def test_diverged_run_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run_training(tiny_spec(), _cfg(epochs=1), "digits", run)
    good = _sha(run / "checkpoints" / "last.pt")
    import edgevit.train.engine as engine

    monkeypatch.setattr(engine, "_step", lambda p, x, y, cfg, step: (float("nan"), torch.zeros(len(y), 10)))
    with pytest.raises(TrainingError, match="loss became nan"):
        run_training(tiny_spec(), _cfg(epochs=2), "digits", run, resume=True)
    assert _sha(run / "checkpoints" / "last.pt") == good


def test_non_finite_weights_are_never_saved(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(2)}})
    before = _sha(path)
    with pytest.raises(FloatingPointError, match="is kept"):
        save_checkpoint(path, {"model": {"w": torch.tensor([1.0, float("inf")])}})
    assert _sha(path) == before and not list(tmp_path.glob(".*tmp*"))


def test_distill_end_to_end_and_export(tmp_path):
    """Teacher -> hard distillation into deit_tiny_distilled -> ONNX export of the averaged heads."""
    from edgevit.run.export import ExportOptions, run_export

    teacher_spec = tiny_spec(name="resnet18_cifar", patch_size=None, extra={})
    run_training(teacher_spec, _cfg(epochs=1, batch_size=128), "digits", tmp_path / "teacher")
    cfg = _cfg(epochs=1, distillation="hard", teacher="resnet18_cifar",
               teacher_checkpoint=str(tmp_path / "teacher" / "model" / "weights.safetensors"))
    spec = tiny_spec(name="deit_tiny_distilled")
    model, _ = run_training(spec, cfg, "digits", tmp_path / "student")
    assert not model.training and not model.distilled_training
    out = run_export(spec, ExportOptions(targets=["onnx"], out=tmp_path / "student", exist_ok=True, bench=False))
    assert (out / "artifacts" / "onnx" / "model.onnx").is_file()
    assert "val_top1" in (tmp_path / "student" / "model" / "history.jsonl").read_text()


def test_two_process_ddp_with_gloo(tmp_path):
    """torchrun, 2 CPU processes, gloo: trains, only rank 0 writes, and the ranks end with equal weights."""
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys, torch, torch.distributed as dist
        sys.path.insert(0, {str(ROOT / 'tests')!r})
        from conftest import tiny_spec
        from edgevit.run.training import run_training
        from edgevit.train.engine import TrainConfig
        model, _ = run_training(tiny_spec(), TrainConfig(epochs=2, batch_size=32, flip=False), "digits",
                             {str(tmp_path / 'run')!r})  # no exist_ok: only rank 0 may create it
        flat = torch.cat([p.detach().flatten() for p in model.parameters()])
        gathered = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, flat)
        assert all(torch.equal(g, gathered[0]) for g in gathered), "ranks diverged"
        # a file, not stdout: the ranks' lines interleave
        open(os.path.join({str(tmp_path)!r}, f"rank{{dist.get_rank()}}.ok"), "w").write("ok")
        dist.destroy_process_group()
    """))
    env = {**os.environ, "EDGEVIT_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(script)], capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert (tmp_path / "rank0.ok").is_file() and (tmp_path / "rank1.ok").is_file()
    history = (tmp_path / "run" / "model" / "history.jsonl").read_text().splitlines()
    assert len(history) == 2  # rank 0 alone wrote it
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 1
