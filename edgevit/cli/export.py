"""Export commands: export, quantize, prune, engine."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import default_out, fresh, friendly, live_help, out, prune_help, split_targets
from .options import TargetOptionsCommand


def _int8_default() -> list[str]:
    from ..targets.registry import quantize_targets

    return quantize_targets()


def _export_command(name: str, default_targets: list[str] | None, doc: str) -> TargetOptionsCommand:
    """export and quantize share every option; only the default targets and the help differ (quantize's:
    every int8 target of edgevit.quant, read from the table). The target options are generated from the
    targets' Options dataclasses (:mod:`.options`)."""

    def command(
        model: str = typer.Option("deit_tiny", "--model", "-m", help="zoo short name (`edgevit models`) or any timm name"),
        target: List[str] = typer.Option(default_targets, "--target", "-t", help="one or more targets, repeat or comma-separate (`edgevit targets`)"),
        checkpoint: Optional[Path] = typer.Option(None, help="local weights: timm/DeiT .pth (with or without a 'model' key) or .safetensors"),
        pretrained: bool = typer.Option(True, help="download timm's hub weights when no --checkpoint is given (needs internet)"),
        num_classes: Optional[int] = typer.Option(None, help="classifier size (default: the model's, 1000)"),
        img_size: Optional[int] = typer.Option(None, help="input size, e.g. 32 for CIFAR-sized variants"),
        patch_size: Optional[int] = typer.Option(None, help="patch size, e.g. 4 at 32 px"),
        prune: Optional[str] = typer.Option(None, help="transforms before export (shown with --help: prune_help)"),
        data: Optional[str] = typer.Option(None, help="labelled images to validate on: ImageFolder, CIFAR folder or 'digits'"),
        split: str = typer.Option("test", help="train | val | test | all"),
        limit: Optional[int] = typer.Option(None, help="validate on a stratified subset of this many images"),
        val_fraction: float = typer.Option(0.2, help="hold-out fraction for data without its own split (digits, a flat folder)"),
        seed: int = typer.Option(0, help="seed of that deterministic, stratified split"),
        out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="run directory (default runs/<model>-<target>)"),
        exist_ok: bool = typer.Option(False, help="write into an existing --out"),
        bench: bool = typer.Option(True, help="benchmark latency after export"),
        batch: int = typer.Option(1, help="benchmark batch size"),
        threads: Optional[int] = typer.Option(None, help="benchmark threads (default: all cores)"),
        options: Optional[dict] = None,  # the target options given (generated flags)
    ):
        from .. import api

        tgts = split_targets(target)
        spec = api.ModelSpec(name=model, num_classes=num_classes, img_size=img_size, patch_size=patch_size,
                             checkpoint=str(checkpoint) if checkpoint else None,
                             pretrained=pretrained and not checkpoint, prune=prune)
        opts = api.ExportOptions(targets=tgts, out=out_dir or default_out(model, tgts), data=data, split=split,
                                 val_fraction=val_fraction, seed=seed, exist_ok=exist_ok, validate_limit=limit,
                                 bench=bench, batch=batch, threads=threads, options=options or {})
        api.export(spec, opts)

    command.__name__ = name
    return TargetOptionsCommand(command, doc, {"target": _int8_default} if default_targets is None else None)


EXPORT_DOC = """Export a model to one or more targets, check each against PyTorch, validate, bench and report.

    Example (offline, with local weights):

        edgevit export --model deit_tiny --target onnx,openvino --checkpoint deit_tiny.pth --data imagenet/val

    A target option that none of the chosen targets honours is an error (`edgevit targets --options`).
    """
QUANTIZE_DOC = """int8 post-training quantization to every int8 target, validated against the float model.

    Calibrates on --calib (default: the training images of --data), keeps LayerNorm, Softmax and the
    head float, and with --max-drop keeps the most sensitive layers float until the top-1 drop on
    held-out images of the calibration source is within bound (the report lists them).

        edgevit quantize --model deit_tiny --checkpoint w.pth --data imagenet/ --calib imagenet/train --max-drop 0.5
    """


def register(app: typer.Typer) -> None:
    exporting = live_help(prune=prune_help)
    app.command("export", cls=exporting)(friendly(_export_command("export", ["onnx"], EXPORT_DOC)))
    app.command("quantize", cls=exporting)(friendly(_export_command("quantize", None, QUANTIZE_DOC)))
    app.command("prune", cls=live_help(method=method_help, spec_text=spec_help))(friendly(prune_cmd))
    app.command("engine")(friendly(engine))


def method_help() -> str:
    from ..transforms import TRANSFORMS

    return (f"the transform: {' | '.join(TRANSFORMS)}; --keep-rate and --locations make evit's spec, --r the "
            "argument of any other (tome:R); or give the whole spec with --spec")


def spec_help() -> str:
    from ..transforms import forms_help

    return f"the whole transform spec instead of --method and its options: {forms_help()}"


def prune_cmd(
    model: str = typer.Option("deit_tiny", "--model", "-m", help="a ViT/DeiT from the zoo or timm"),
    method: str = typer.Option("evit", help="the transform (shown with --help: method_help)"),
    keep_rate: float = typer.Option(0.7, help="EViT: fraction of patch tokens kept at each pruning block, in (0, 1]"),
    locations: Optional[str] = typer.Option(None, help="EViT: blocks that prune, comma-separated (default: a quarter, half and three quarters of depth, 3,6,9 for DeiT)"),
    r: int = typer.Option(8, help="ToMe: tokens merged in every block (the argument of any --method but evit)"),
    spec_text: Optional[str] = typer.Option(None, "--spec", help="the whole transform spec (shown with --help: spec_help)"),
    checkpoint: Optional[Path] = typer.Option(None, help="dense weights (.pth/.safetensors)"),
    pretrained: bool = typer.Option(True, help="hub weights when no --checkpoint (needs internet)"),
    num_classes: Optional[int] = typer.Option(None), img_size: Optional[int] = typer.Option(None),
    patch_size: Optional[int] = typer.Option(None),
    finetune_epochs: int = typer.Option(0, help="short fine-tune of the pruned model on --data, distilled from the dense one"),
    finetune_lr: float = typer.Option(1e-4, help="fine-tune learning rate"),
    target: List[str] = typer.Option(["onnx", "openvino"], "--target", "-t", help="targets to export to (int8 ones too)"),
    data: Optional[str] = typer.Option(None, help="labelled images: validation (and the fine-tune's training split)"),
    split: str = typer.Option("test", help="split to validate on"),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="run directory (default runs/<model>-<method>)"),
    exist_ok: bool = typer.Option(False, help="write into an existing --out"),
    bench: bool = typer.Option(True, help="benchmark latency after export"),
):
    """Token pruning or merging with static shapes (EViT, ToMe, any registered token transform), then export,
    validate, bench and report.

        edgevit prune --model deit_tiny --checkpoint w.pth --method evit --keep-rate 0.7 --data imagenet/ --finetune-epochs 1
        edgevit prune --model deit_tiny --checkpoint w.pth --method tome --r 8 --target openvino,openvino-int8 --data imagenet/
        edgevit prune --model deit_tiny --checkpoint w.pth --spec evit:0.7+tome:4 --data imagenet/

    The same transforms are `--prune evit:0.7` / `--prune tome:8` on `edgevit export` and `edgevit quantize`.
    """
    from .. import api

    # --keep-rate and --locations are EViT's; --r is the argument of any other (ToMe's r); an unknown
    # method: the parser names the known
    text = spec_text or (f"evit:{keep_rate:g}" + (f"@{locations}" if locations else "") if method == "evit"
                         else f"{method}:{r}")
    spec = api.ModelSpec(name=model, num_classes=num_classes, img_size=img_size, patch_size=patch_size,
                         checkpoint=str(checkpoint) if checkpoint else None, pretrained=pretrained and not checkpoint)
    tag = (spec_text or method).replace(":", "").replace("+", "-").replace("@", "-").replace(",", "")
    opts = api.ExportOptions(targets=split_targets(target), out=out_dir or fresh(Path("runs") / f"{model}-{tag}"),
                             data=data, split=split, exist_ok=exist_ok, bench=bench)
    print_prune_summary(api.prune(spec, text, opts, finetune_epochs, finetune_lr))


def print_prune_summary(run_dir: Path) -> None:
    """What pruning bought, after the report: the token schedule, top-1 and eager latency vs the dense model."""
    import json

    from ..progress import say

    def load(name: str) -> dict:
        path = run_dir / name
        return json.loads(path.read_text()) if path.is_file() else {}

    run, val, bench = load("run.json"), load("results/validate.json"), load("results/bench.json")
    if run.get("prune", {}).get("tokens_per_block"):
        say("[bold]tokens:[/] ", plain=token_line(run["prune"]))
    for line in dense_top1_lines(val) or ["no --data given: pass --data to compare top-1 with the dense model"]:
        say("[bold]dense baseline:[/] ", plain=line)
    say("[bold]PyTorch eager:[/] ", plain=eager_line(bench.get("pytorch-eager"), run_dir))


def token_line(facts: dict) -> str:
    """``64 -> 33 @1 -> 18 @2 patch tokens (...)``: the patch tokens after each block where they change,
    and the share of the dense blocks' work left, from token counts alone (prefix tokens left out)."""
    n0, per = int(facts["patch_tokens_in"]), [int(n) for n in facts["tokens_per_block"]]
    steps = [f"{n} @{i}" for i, n in enumerate(per) if n != ([n0] + per)[i]]
    attn_in = [n0] + per[:-1]  # a block's attention sees the tokens entering it; its MLP, those it kept
    linear = sum(a + 2 * m for a, m in zip(attn_in, per)) / (3 * n0 * len(per))  # qkv+proj 4d^2, MLP 8d^2
    attention = sum(a * a for a in attn_in) / (n0 * n0 * len(per))  # QK^T and AV: N^2 d
    return (f"{' -> '.join([str(n0), *steps])} patch tokens after blocks ({facts.get('spec', '?')}): the blocks' "
            f"linear layers do ~{100 * linear:.0f} % and their attention matrices ~{100 * attention:.0f} % "
            "of the dense model's FLOPs")


def dense_top1_lines(val: dict) -> list[str]:
    """One line per validated artifact: dense float top-1, the artifact's, the drop and its 95 % interval."""
    lines = []
    for name, r in val.items():
        if "dense_top1" not in r:
            continue
        lo, hi = r["top1_drop_vs_dense_ci95_pts"]
        lines.append(f"{name}: top-1 {r['top1']:.2f} % vs dense float {r['dense_top1']:.2f} % (pruned float "
                     f"{r['float_top1']:.2f} %) on {r['images']} images: drop {r['top1_drop_vs_dense_pts']:.2f} pts, "
                     f"95 % interval {lo:.2f} to {hi:.2f}")
    return lines


def eager_line(eager: dict | None, run_dir: Path) -> str:
    if not eager:
        return (f"not benchmarked (--no-bench): `edgevit bench {run_dir}/artifacts/*` times the dense and the "
                "pruned model in PyTorch eager beside the artifacts")
    dense = eager.get("dense_eager")
    if not dense:
        return f"pruned {eager['p50_ms']:.2f} ms p50 (dense model not timed: its weights were not recorded or could not be loaded)"
    text = (f"dense {dense['p50_ms']:.2f} ms -> pruned {eager['p50_ms']:.2f} ms p50 "
            f"({dense['p50_ms'] / eager['p50_ms']:.2f}x), batch {eager.get('batch', '?')}, "
            f"{eager.get('threads', '?')} thread(s)")
    noisy = [r["noise"]["why"] for r in (dense, eager) if r.get("noise", {}).get("noisy")]
    return text + (f"; noisy: {noisy[0]}" if noisy else "")


def engine(artifact: Path = typer.Argument(..., help="a tensorrt-fp16 or tensorrt-int8 artifact directory"),
           opt_batch: int = typer.Option(1, help="the latency batch: a profile of its own, tuned for it"),
           max_batch: int = typer.Option(8, help="the throughput (largest) batch: a profile of its own, tuned for it"),
           workspace_mb: int = typer.Option(1024, help="builder workspace limit in MiB"),
           timing_cache: str = typer.Option("default", help="timing cache file ('default': ~/.cache/edgevit/tensorrt/timing.cache; 'none': off)")):
    """Build the TensorRT engine of an exported artifact on this machine (needs TensorRT and a GPU).

    Export anywhere, build where the engine will run (engines are specific to the GPU and the
    TensorRT version):

        edgevit export --model deit_tiny --target tensorrt-int8 --checkpoint w.pth --data val/
        edgevit engine runs/deit_tiny-tensorrt-int8/artifacts/tensorrt-int8
    """
    from .. import api

    eopts = api.EngineOptions(opt_batch=opt_batch, max_batch=max_batch, workspace_mb=workspace_mb,
                              timing_cache=timing_cache)
    meta = api.build_engine(artifact, eopts)
    out.print(f"engine: {Path(artifact) / 'model.plan'} (TensorRT {meta['tensorrt']}, {meta['gpu']}, "
              f"{meta['build_s']:.0f} s)", highlight=False)
