"""Orchestration: which steps run, in which order, and where their files go. The public verbs
over it are in :mod:`edgevit.api`."""
