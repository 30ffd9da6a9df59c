"""edgevit: Vision Transformers from training to the edge device, in one pipeline."""
__version__ = "0.1.0"
