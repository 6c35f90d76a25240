"""The ``[privacy]`` section as a stage: one call from the config's plain values.

``mode`` picks the mechanism; the other keys are its keyword arguments. When the noise
multiplier is not given but ``target_epsilon`` is, it is calibrated from the run's rounds
and sampling rate, so a config can ask for a budget rather than a noise level.
"""

from __future__ import annotations

import inspect
from typing import Any

from ..stages import Stage
from .accountant import calibrate_noise_multiplier
from .central import CentralDP

MODES = ("central",)


def privacy_stage(
    mode: str,
    *,
    rounds: int,
    sampling_rate: float,
    noise_multiplier: float | None = None,
    **options: Any,
) -> Stage:
    """The stage for ``privacy.mode`` with ``options``; ``rounds`` and ``sampling_rate``
    (clients per round / clients) are the run's. ValueError names the key at fault."""
    if mode not in MODES:
        raise ValueError(f"privacy.mode must be one of {list(MODES)}, got {mode!r}")
    unknown = sorted(set(options) - set(inspect.signature(CentralDP).parameters))
    if unknown:
        raise ValueError(f"privacy.mode = {mode!r} does not take privacy.{unknown[0]}")
    if noise_multiplier is None:
        target = options.get("target_epsilon")
        if target is None:
            raise ValueError("privacy: give privacy.noise_multiplier or privacy.target_epsilon")
        noise_multiplier = calibrate_noise_multiplier(
            target,
            options.get("delta", 1e-5),
            rounds,
            sampling_rate,
            options.get("accountant", "rdp"),
        )
    options.setdefault("sampling_rate", sampling_rate)
    return CentralDP(noise_multiplier, **options)
