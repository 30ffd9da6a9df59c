"""Zero-shot classifiers (LiT / CLIP): the baked head is exact, LiT is close to its tower's own head,
and the baked LiT classifier survives int8 and every export target.

1. Baked head vs open_clip: two small open_clip models with random weights (no pretrained weights
   exist here): an open_clip ViT tower (QuickGELU, ViT-B/32-like, smaller), and a SigLIP-style model
   (timm ViT-Ti tower, MAP pooling, logit scale 10 and bias -10 as SigLIP initialises them). edgevit
   bakes the 1,000 ImageNet class names × open_clip's 7 "simple" templates into one classifier and
   rebuilds it from its file alone; the reference is open_clip's own path, built without edgevit
   (``open_clip.CLIP``, ``build_zero_shot_classifier``, ``encode_image``, scale and bias). Both score
   the 1,000 ImageNet sample images, preprocessed once; the baked model's preprocessing is also
   compared with open_clip's ``image_transform_v2`` pixel by pixel.
2. LiT: ``edgevit lit`` locks the committed reference CIFAR DeiT-Ti (benchmarks/reference/) and tunes a
   small open_clip text transformer on captions of the CIFAR-10 class names; its zero-shot top-1 on
   the 600 test images is paired against the locked tower's own supervised head.
3. The LiT model baked (``edgevit zeroshot``) and exported to onnx, openvino, onnx-int8 (static Q/DQ),
   openvino-int8 (NNCF) and tensorrt-int8 (the graph; run by ONNX Runtime here: no TensorRT), each
   validated on the test images against the float zero-shot classifier; plus token pruning (EViT 0.7)
   of the baked classifier, float and int8.

    python benchmarks/zeroshot.py [--lit-steps 300] [--calib-size 300] [--no-prune]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, SHARED_DATA, check, write_results  # noqa: E402
from reference_model import reference_spec, reference_weights  # noqa: E402

RUN = ROOT / "benchmarks" / "runs" / "zeroshot"
CIFAR = SHARED_DATA / "cifar-10-batches-py"
IMAGENET = SHARED_DATA / "imagenet-sample"
TARGETS = ["onnx", "openvino", "onnx-int8", "openvino-int8", "tensorrt-int8"]
TEXT = {"context_length": 77, "width": 256, "heads": 4, "layers": 4}
MODELS = {  # small open_clip two-tower configs, random weights
    "openclip-vit (QuickGELU, patch 32, 4x256)": {
        "embed_dim": 256, "quick_gelu": True, "text_cfg": TEXT,
        "vision_cfg": {"image_size": 224, "patch_size": 32, "width": 256, "layers": 4, "head_width": 64}},
    "siglip-style (timm vit_tiny, map pool, scale 10, bias -10)": {
        "embed_dim": 192, "init_logit_scale": 2.302585092994046, "init_logit_bias": -10.0, "text_cfg": TEXT,
        "vision_cfg": {"timm_model_name": "vit_tiny_patch16_224", "timm_pool": "map", "timm_proj": "none",
                       "image_size": 224}},
}


def imagenet_names() -> list[str]:
    """The names both sides encode: edgevit's built-in ``imagenet`` set, open_clip's IMAGENET_CLASSNAMES with
    its two repeated names told apart (744 "projectile", 836 "sunglass"; as given, two pairs tie exactly)."""
    from edgevit.models.prompts import BUILTIN_CLASSES

    return list(BUILTIN_CLASSES["imagenet"]())


def open_clip_reference(cfg: dict, ckpt: Path, images, batch: int = 100):
    """open_clip's own zero-shot logits, no edgevit code involved."""
    import open_clip
    import torch
    from open_clip.tokenizer import SimpleTokenizer
    from open_clip.zero_shot_classifier import build_zero_shot_classifier
    from open_clip.zero_shot_metadata import SIMPLE_IMAGENET_TEMPLATES
    from safetensors.torch import load_file

    model = open_clip.CLIP(**cfg).eval()
    model.load_state_dict(load_file(str(ckpt)))
    t0 = time.perf_counter()
    with torch.no_grad():
        weights = build_zero_shot_classifier(model, SimpleTokenizer(context_length=cfg["text_cfg"]["context_length"]),
                                             imagenet_names(), SIMPLE_IMAGENET_TEMPLATES, num_classes_per_batch=20)
        text_s = time.perf_counter() - t0
        out = []
        for i in range(0, len(images), batch):
            logits = model.logit_scale.exp() * model.encode_image(images[i:i + batch], normalize=True) @ weights
            out.append(logits + model.logit_bias if model.logit_bias is not None else logits)
    return torch.cat(out), text_s


def baked_vs_open_clip(name: str, cfg: dict) -> dict:
    import torch
    from safetensors.torch import save_file

    from edgevit import api
    from edgevit.data import data_config, eval_transform, load_split
    from edgevit.models import ModelSpec, create_model
    from edgevit.models.clip import build_two_tower

    work = RUN / name.split(" ")[0]
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    ckpt, cfg_file = work / "random.safetensors", work / "config.json"
    save_file({k: v.contiguous() for k, v in build_two_tower(cfg).state_dict().items()}, str(ckpt))
    cfg_file.write_text(json.dumps(cfg))
    zopts = api.ZeroShotOptions(model=str(cfg_file), checkpoint=str(ckpt), classes="imagenet", templates="simple")
    t0 = time.perf_counter()
    _, spec = api.bake_zeroshot(zopts, work / "bake", exist_ok=True)
    bake_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    api.bake_zeroshot(zopts, work / "bake-again", exist_ok=True)  # the text embeddings come from the cache
    cached_s = time.perf_counter() - t0
    baked = create_model(ModelSpec(spec.name, checkpoint=spec.checkpoint))  # from the baked file alone
    ds = load_split(str(IMAGENET), "all", eval_transform(data_config(baked)))
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    ref, ref_text_s = open_clip_reference(cfg, ckpt, images)
    with torch.no_grad():
        got = torch.cat([baked(images[i:i + 100]) for i in range(0, len(images), 100)])
    agree = (got.argmax(1) == ref.argmax(1)).float().mean().item() * 100
    labels = torch.tensor([ds[i][1] for i in range(len(ds))])
    return {"variant": f"baked head vs open_clip: {name}", "model": spec.name, "images": len(images),
            "classes": got.shape[1], "templates": 7, "agreement_pct": agree,
            "max_abs_logit_diff": (got - ref).abs().max().item(), "logit_range": [ref.min().item(), ref.max().item()],
            "pixel_max_abs_diff_vs_open_clip_preprocess": preprocess_diff(baked, ds, cfg),
            "top1_random_weights": (got.argmax(1) == labels).float().mean().item() * 100,
            "bake_s": round(bake_s, 1), "bake_again_cached_s": round(cached_s, 1),
            "open_clip_text_encode_s": round(ref_text_s, 1)}


def preprocess_diff(baked, ds, cfg: dict, n: int = 50) -> float:
    """edgevit's eval transform for the baked model vs open_clip's own, on the same files."""
    from open_clip.transform import PreprocessCfg, image_transform_v2
    from PIL import Image

    from edgevit.data import data_config, eval_transform

    theirs = image_transform_v2(PreprocessCfg(size=cfg["vision_cfg"]["image_size"]), is_train=False)
    ours = eval_transform(data_config(baked))
    paths = [ds.base.samples[i][0] for i in ds.indices[:n]] if hasattr(ds, "base") else []
    diffs = [(ours(Image.open(p).convert("RGB")) - theirs(Image.open(p).convert("RGB"))).abs().max().item()
             for p in paths]
    return max(diffs) if diffs else float("nan")


def lit(args) -> dict:
    from edgevit import api

    t0 = time.perf_counter()
    out = api.lit(reference_spec(reference_weights()),
                  api.LitOptions(data=str(CIFAR), out=RUN / "lit", classes="cifar10", split="test", exist_ok=True,
                                 config=api.LitConfig(steps=args.lit_steps)))
    facts = json.loads((out / "lit.json").read_text())
    return {**facts, "wall_s": round(time.perf_counter() - t0, 1), "run": str(out)}


def export_lit(args, lit_dir: Path, templates) -> tuple[Path, Path | None]:
    from edgevit import api

    zopts = api.ZeroShotOptions(model=str(lit_dir / "model"), classes="cifar10", templates=templates)
    opts = api.ExportOptions(targets=TARGETS, out=RUN / "lit-zeroshot", data=str(CIFAR), split="test", exist_ok=True,
                             options={"calib_size": args.calib_size})
    run = api.zeroshot(zopts, opts)
    pruned = None
    if args.prune:
        pruned = api.zeroshot(zopts, api.ExportOptions(
            targets=["openvino", "openvino-int8"], out=RUN / "lit-zeroshot-evit07", data=str(CIFAR), split="test",
            exist_ok=True, options={"calib_size": args.calib_size}), prune="evit:0.7")
    return run, pruned


def artifact_rows(run: Path, label: str) -> list[dict]:
    val = json.loads((run / "results" / "validate.json").read_text())
    bench = {r["name"]: r for r in json.loads((run / "results" / "bench.json").read_text()).values()} \
        if (run / "results" / "bench.json").is_file() else {}
    rows = []
    for name in sorted(p.name for p in (run / "artifacts").iterdir()):
        mf = json.loads((run / "artifacts" / name / "manifest.json").read_text())
        v, b = val.get(name, {}), bench.get(name, {})
        rows.append({"variant": f"{label} {name}", "target": name, "precision": mf["precision"],
                     "classes": len(mf.get("classes") or []), "prune": (mf.get("prune") or {}).get("spec"),
                     "check_vs_pytorch": mf["check_vs_pytorch"], "size_mb": mf["size_bytes"] / 2**20,
                     **{k: v.get(k) for k in ("images", "top1", "float_top1", "top1_drop_pts", "top1_drop_ci95_pts",
                                              "agreement_pct", "only_float_correct", "only_artifact_correct")},
                     "p50_ms": b.get("p50_ms"), "runtime_precision": v.get("runtime_precision")})
    return rows


def exported(rows: list[dict]) -> int:
    """Targets whose artifact was written, checked against PyTorch (top-1 agreement on the check images)
    and validated on the test images."""
    return sum(1 for r in rows if r["target"] in TARGETS and r["images"] and
               r["check_vs_pytorch"].get("top1_agreement_pct", 0) > 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lit-steps", type=int, default=300, help="LiT optimizer steps (edgevit lit's default)")
    ap.add_argument("--calib-size", type=int, default=300, help="int8 calibration images (CIFAR training batches)")
    ap.add_argument("--no-prune", dest="prune", action="store_false", help="skip the token-pruned export")
    args = ap.parse_args()
    import os

    os.environ.setdefault("EDGEVIT_CACHE", str(RUN / "cache"))  # text embeddings: first bake encodes, second reads
    t0 = time.perf_counter()
    rows = [baked_vs_open_clip(name, cfg) for name, cfg in MODELS.items()]
    facts = lit(args)
    ev = facts["evaluation"]
    rows.append({"variant": "LiT zero-shot vs the locked tower's supervised head", **ev})
    run, pruned = export_lit(args, Path(facts["run"]), facts["config"]["templates"])
    zs = artifact_rows(run, "baked LiT")
    rows += zs + (artifact_rows(pruned, "baked LiT, evit:0.7") if pruned else [])
    ov8 = next(r for r in zs if r["target"] == "openvino-int8")
    checks = [
        check("baked_head_agreement_pct", min(r["agreement_pct"] for r in rows[:2]), ">=", 100),
        check("baked_head_max_abs_logit_diff", max(r["max_abs_logit_diff"] for r in rows[:2]), "<=", 1e-4),
        check("lit_zeroshot_top1_minus_classifier_pts", ev["zeroshot_minus_classifier_pts"], ">=", -3),
        check("lit_openvino_int8_agreement_pct", ov8["agreement_pct"], ">=", 95),
        check("lit_openvino_int8_top1_drop_pts", ov8["top1_drop_pts"], "<=", 1.0),
        check("zeroshot_targets_exported", exported(zs), ">=", 5),
    ]
    write_results(__file__, rows, checks, lit={k: facts[k] for k in ("config", "history") if k in facts},
                  wall_minutes=round((time.perf_counter() - t0) / 60, 1))


if __name__ == "__main__":
    main()
