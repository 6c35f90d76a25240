"""``[privacy]``: the strategy wrapped in its privacy stage (:mod:`fedloom.privacy`).

The stage needs the run's rounds and sampling rate (to calibrate a noise multiplier from
``target_epsilon`` and to account each round), so it is built once the task's client count
is known. Combinations that would break the guarantee are refused with the keys named.
"""

from __future__ import annotations

from ..algorithms.asynchronous import AsyncStrategy
from ..algorithms.base import Strategy
from ..config import Config
from ..errors import ConfigError
from ..privacy import privacy_stage
from ..privacy.distributed import DistributedDP
from ..privacy.dpsgd import DPSGD
from ..privacy.local import LocalDP
from ..privacy.secagg import SecureAggregation
from ..stages import Stage, Staged

SECAGG_KEYS = ("num_shares", "reconstruction_threshold", "quantization_range", "modulus")


def with_privacy(
    cfg: Config, strategy: Strategy | AsyncStrategy, num_clients: int, *, networked: bool = False
) -> Strategy | AsyncStrategy:
    """``strategy`` wrapped in the ``[privacy]`` stage, or as it is without the section."""
    p = cfg.privacy
    if p is None:
        return strategy
    where = f"privacy.mode = {p.mode!r}"
    if isinstance(strategy, AsyncStrategy):
        raise ConfigError(
            f"{where} cannot be combined with strategy.name = {cfg.strategy.name!r}: it is "
            "asynchronous, and the accountant counts synchronous rounds of sampled clients"
        )
    if cfg.topology is not None:
        raise ConfigError(f"{where} cannot be combined with [topology]: edges aggregate in clear")
    if (p.secure_aggregation or p.mode == "distributed") and networked:
        raise ConfigError(
            f"{where} with privacy.secure_aggregation runs in simulation; a deployment "
            "aggregates securely with [runtime.secagg] (the network runtime's SecAgg+)"
        )
    if p.mode in ("local", "dpsgd") and networked and cfg.runtime.secagg is not None:
        raise ConfigError(
            f"{where} cannot be combined with [runtime.secagg]: a secure round carries no "
            "client's metrics, so the clients' epsilons would go unreported"
        )
    if (p.secure_aggregation or p.mode == "distributed") and cfg.compression.up:
        raise ConfigError(
            f"compression.up = {cfg.compression.up} cannot be combined with "
            f"{where} and secure aggregation: the protocol quantises and masks the sum itself"
        )
    rate = strategy.cohort_size(num_clients) / num_clients
    try:
        return Staged(strategy, _stages(cfg, rate))
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _stages(cfg: Config, rate: float) -> list[Stage]:
    """Central DP (then SecAgg+ last, if asked: it sees only zero deltas after it), or
    distributed DP, which is secure aggregation with the clients' noise."""
    p = cfg.privacy
    assert p is not None
    secagg = {k: getattr(p, k) for k in SECAGG_KEYS}
    if p.mode == "distributed":
        z = p.noise_multiplier
        if z is None:
            raise ValueError("privacy.mode = 'distributed' needs privacy.noise_multiplier")
        return [
            DistributedDP(
                z,
                p.clip_norm,
                p.delta,
                target_epsilon=p.target_epsilon,
                sampling_rate=rate,
                accountant=p.accountant,
                dropout_tolerance=p.dropout_tolerance,
                clipping_range=p.clipping_range,
                **secagg,
            )
        ]
    if p.mode in ("local", "dpsgd"):
        z = p.noise_multiplier
        if z is None:
            raise ValueError(f"privacy.mode = {p.mode!r} needs privacy.noise_multiplier")
        for key in ("target_epsilon", "target_quantile"):
            if getattr(p, key) is not None:
                raise ValueError(
                    f"privacy.{key} applies to mode 'central'; privacy.mode = {p.mode!r} "
                    "reports each client's own epsilon"
                )
        kind = LocalDP if p.mode == "local" else DPSGD
        stages: list[Stage] = [kind(z, p.clip_norm, p.delta, accountant=p.accountant)]
    else:
        stages = [_central(cfg, rate)]
    if p.secure_aggregation:
        clip = p.clip_norm if p.clipping_range is None else p.clipping_range
        stages.append(SecureAggregation(clipping_range=clip, **secagg))
    return stages


def _central(cfg: Config, rate: float) -> Stage:
    """Central DP's stage from the section's values (calibrated from a target epsilon)."""
    p = cfg.privacy
    assert p is not None
    central = {"secure_aggregation", "clipping_range", "dropout_tolerance", *SECAGG_KEYS}
    options = p.model_dump(exclude={"mode", "noise_multiplier", *central}, exclude_none=True)
    return privacy_stage(
        p.mode, rounds=cfg.rounds, sampling_rate=rate, noise_multiplier=p.noise_multiplier,
        **options,
    )  # fmt: skip
