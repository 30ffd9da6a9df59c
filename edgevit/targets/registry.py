"""What the table of targets says, derived from what each target declares (:class:`~.base.Target`):
the int8 targets and their float twins, the targets `edgevit quantize` picks, the runtime families
`edgevit optimize` searches, and each backend's label and colour. No table here names a target: a
target registered from anywhere (a plugin, a test) appears in every answer.

Importing this module registers the backends first (the package loads them when its table is asked for).
"""
from __future__ import annotations

from ..errors import TargetError
from . import TARGETS  # the table, every backend registered
from .base import Target
from .int8 import Int8Target


def int8_targets() -> list[str]:
    """Every int8 target, in the table's order."""
    return [t.name for t in TARGETS.values() if t.int8]


def quantize_targets() -> list[str]:
    """The targets `edgevit quantize` exports to by default: every int8 target made from edgevit.quant's int8
    graph (an :class:`Int8Target`: calibration, ``--max-drop`` and QAT apply), in the table's order."""
    return [t.name for t in TARGETS.values() if isinstance(t, Int8Target)]


def float_twin_of(name: str) -> str | None:
    """The float target an int8 target is compared with: the one it declares, else the first float target
    of its backend; None for a float (or unknown) target."""
    t = TARGETS.get(name)
    if t is None or not t.int8:
        return None
    return t.float_twin or next((o.name for o in TARGETS.values() if o.backend == t.backend and not o.int8), None)


def family_of_target(t: Target) -> str | None:
    """The family a target declares; an int8 target without one joins its float twin's."""
    twin = TARGETS.get(float_twin_of(t.name) or "")
    return t.family or (twin.family if twin is not None else None)


def families() -> dict[str, tuple[str, ...]]:
    """The runtimes `edgevit optimize` searches: family -> its targets, the float one first, then the int8
    ones (each target declares ``family``; an int8 target joins its float twin's)."""
    members: dict[str, list[Target]] = {}
    for t in TARGETS.values():
        if fam := family_of_target(t):
            members.setdefault(fam, []).append(t)
    out = {}
    for fam, ts in members.items():
        floats = [t.name for t in ts if not t.int8]
        if len(floats) != 1:
            raise TargetError(f"family {fam!r} has {len(floats)} float targets ({', '.join(floats) or 'none'})",
                              "give each family of `edgevit optimize` exactly one float target")
        out[fam] = (*floats, *(t.name for t in ts if t.int8))
    return out


def backends() -> dict[str, tuple[str, str]]:
    """Every backend in the table, in order of registration: (label, colour) as its targets declare them
    (the label defaults to the backend's name, the colour to "": the report picks one)."""
    out: dict[str, tuple[str, str]] = {}
    for t in TARGETS.values():
        label, colour = out.get(t.backend, ("", ""))
        out[t.backend] = (label or t.label, colour or t.colour)
    return {b: (label or b, colour) for b, (label, colour) in out.items()}
