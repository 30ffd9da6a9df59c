"""Token operations as pure tensor functions (see tokens.py)."""
