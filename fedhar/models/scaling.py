"""Width scaling shared by every model: hidden sizes grow or shrink, interfaces do not."""

from __future__ import annotations

import math


def scale_width(base: int, width: float) -> int:
    """Hidden size for a width multiplier: ``ceil(base * width)``, at least 1.

    Parameters
    ----------
    base : int
        Hidden size at ``width=1.0``.
    width : float
        Width multiplier, in (0, 1] for sub-models (values above 1 widen the model).
    """
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width}; use e.g. 1.0, 0.75, 0.5 or 0.25")
    return max(1, math.ceil(base * width))
