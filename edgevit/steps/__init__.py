"""Pipeline stages that change the model (training now; distillation, pruning, int8 later)."""
