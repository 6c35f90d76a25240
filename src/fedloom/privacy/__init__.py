"""Privacy: differential privacy and secure aggregation.

Differential privacy comes as stages around any averaging strategy:
``Staged(FedAvg(...), [CentralDP(noise_multiplier=1.0, clip_norm=0.5, delta=1e-5)])`` trains
with client-level central DP (DP-FedAvg); each round's record carries the epsilon spent so
far, and ``target_epsilon`` stops the run before it would be exceeded.
"""

from ..stages import Stage, Staged
from .accountant import Accountant, calibrate_noise_multiplier
from .central import CentralDP
from .clipping import AdaptiveClip, clip_
from .compat import check_central
from .modes import MODES, privacy_stage

__all__ = [
    "MODES",
    "Accountant",
    "AdaptiveClip",
    "CentralDP",
    "Stage",
    "Staged",
    "calibrate_noise_multiplier",
    "check_central",
    "clip_",
    "privacy_stage",
]
