"""Privacy: differential privacy and secure aggregation.

Differential privacy comes as stages around any averaging strategy:
``Staged(FedAvg(...), [CentralDP(noise_multiplier=1.0, clip_norm=0.5, delta=1e-5)])`` trains
with client-level central DP (DP-FedAvg); each round's record carries the epsilon spent so
far, and ``target_epsilon`` stops the run before it would be exceeded.
:func:`privacy_stage` builds the stage from the ``[privacy]`` section's plain values.

Threat model of ``mode = "central"``: the aggregator is trusted; it sees every client's
update in the clear, as without DP. What is protected is what the trained model (every
released global model, to clients and to whoever gets the final one) reveals about any one
client's participation and data: whether a client took part or not, the probability of any
outcome of training changes by at most a factor e^epsilon, plus delta. Clients see only
global models, so the same bound holds against a curious client; an eavesdropper on the
links sees updates unless the transport is encrypted (TLS) or secure aggregation hides them.
"""

from ..stages import Stage, Staged
from .accountant import Accountant, calibrate_noise_multiplier
from .central import CentralDP
from .clipping import AdaptiveClip, clip_
from .compat import check_central
from .ddp_noise import SkellamShares
from .distributed import DistributedDP
from .distributed_net import DeployedDistributedDP
from .dpsgd import DPSGD
from .local import LocalDP
from .modes import MODES, privacy_stage
from .secagg import SecureAggregation

__all__ = [
    "DPSGD",
    "MODES",
    "Accountant",
    "AdaptiveClip",
    "CentralDP",
    "DeployedDistributedDP",
    "DistributedDP",
    "LocalDP",
    "SecureAggregation",
    "SkellamShares",
    "Stage",
    "Staged",
    "calibrate_noise_multiplier",
    "check_central",
    "clip_",
    "privacy_stage",
]
