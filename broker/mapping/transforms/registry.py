"""The registry of named transforms: what a rule's ``function:`` may call, inbound and outbound.

Each inbound family module (``dates``, ``strings``, ``codes``, ``names``, ``quantities``,
``observations``, ``orders``) declares its own ``TRANSFORMS``; ``INBOUND`` is their union, and a
name declared by two families is an error at import. ``OUTBOUND`` is ``outbound.OUTBOUND``.
"""

from __future__ import annotations

from collections.abc import Mapping

from broker.mapping.transforms import (
    codes,
    dates,
    names,
    observations,
    orders,
    quantities,
    strings,
)
from broker.mapping.transforms.base import Transform
from broker.mapping.transforms.outbound import OUTBOUND

__all__ = ["INBOUND", "OUTBOUND"]


def _union(*families: Mapping[str, Transform]) -> dict[str, Transform]:
    """Every family's transforms in one table; a name in two families is a programming error."""
    found: dict[str, Transform] = {}
    for family in families:
        for name, transform in family.items():
            if name in found:
                msg = f"the transform {name!r} is declared by two families"
                raise ValueError(msg)
            found[name] = transform
    return found


INBOUND: dict[str, Transform] = _union(
    dates.TRANSFORMS,
    strings.TRANSFORMS,
    codes.TRANSFORMS,
    names.TRANSFORMS,
    quantities.TRANSFORMS,
    observations.TRANSFORMS,
    orders.TRANSFORMS,
)
"""Inbound transforms by the name used in ``function:``."""
