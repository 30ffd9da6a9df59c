"""Training: the engine (:mod:`.engine`: timm's DeiT recipe, EMA, DDP, resumable checkpoints) and
DeiT distillation (:mod:`.distill`)."""
