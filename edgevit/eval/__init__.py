"""Measurement: accuracy against the float model (:mod:`.validate`), latency (:mod:`.latency`) and
each artifact's outputs against PyTorch (:mod:`.check`)."""
