"""``[privacy]``: the strategy wrapped in its privacy stage (:mod:`fedloom.privacy`).

The stage needs the run's rounds and sampling rate (to calibrate a noise multiplier from
``target_epsilon`` and to account each round), so it is built once the task's client count
is known. Combinations that would break the guarantee are refused with the keys named.

In a deployment, ``mode = "distributed"`` runs the network runtime's SecAgg+ with the
``[privacy]`` section's protocol keys (:func:`deployed_secagg`; ``[runtime.secagg]`` may add
its ``stage_timeout``), each client adding its own noise; the aggregator's stage only
accounts (:class:`~fedloom.privacy.distributed_net.DeployedDistributedDP`).
"""

from __future__ import annotations

from ..algorithms.asynchronous import AsyncStrategy
from ..algorithms.base import Strategy
from ..config import Config
from ..errors import ConfigError
from ..privacy import privacy_stage
from ..privacy.ddp_noise import SkellamShares
from ..privacy.distributed import DistributedDP
from ..privacy.distributed_net import DeployedDistributedDP
from ..privacy.dpsgd import DPSGD
from ..privacy.local import LocalDP
from ..privacy.secagg import SecureAggregation
from ..runtime.secagg_round import SecAggSettings
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
    if p.secure_aggregation and networked:
        raise ConfigError(
            f"{where} with privacy.secure_aggregation runs in simulation: central DP clips "
            "each update at the aggregator, which secure aggregation hides; a deployment "
            "aggregates securely with [runtime.secagg], or with privacy.mode = 'distributed'"
        )
    if p.mode == "central" and networked and cfg.runtime.secagg is not None:
        raise ConfigError(
            f"{where} cannot be combined with [runtime.secagg]: the aggregator would clip and "
            "noise the securely aggregated mean, not each client's update; use "
            "privacy.mode = 'distributed' (each client adds its share of the noise)"
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
        if p.mode == "distributed" and networked:
            deployed_secagg(cfg)  # refuses conflicting keys now
            return Staged(strategy, [_deployed(cfg, rate)])
        return Staged(strategy, _stages(cfg, rate))
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _stages(cfg: Config, rate: float) -> list[Stage]:
    """Central DP (then SecAgg+ last, if asked: it sees only zero deltas after it), or
    distributed DP, which is secure aggregation with the clients' noise."""
    p = cfg.privacy
    assert p is not None
    secagg = {k: getattr(p, k) for k in SECAGG_KEYS}
    clip = p.clip_norm if p.clipping_range is None else p.clipping_range
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
    else:  # with secure aggregation after it, the noise covers its rounding too
        step = 2 * clip / (p.quantization_range - 1) if p.secure_aggregation else 0.0
        stages = [_central(cfg, rate, rounding_step=step)]
    if p.secure_aggregation:
        stages.append(SecureAggregation(clipping_range=clip, **secagg))
    return stages


def _central(cfg: Config, rate: float, rounding_step: float = 0.0) -> Stage:
    """Central DP's stage from the section's values (calibrated from a target epsilon);
    ``rounding_step``: secure aggregation's fixed-point step, which the noise covers."""
    p = cfg.privacy
    assert p is not None
    central = {"secure_aggregation", "clipping_range", "dropout_tolerance", *SECAGG_KEYS}
    options = p.model_dump(exclude={"mode", "noise_multiplier", *central}, exclude_none=True)
    if rounding_step:
        options["rounding_step"] = rounding_step
    return privacy_stage(
        p.mode, rounds=cfg.rounds, sampling_rate=rate, noise_multiplier=p.noise_multiplier,
        **options,
    )  # fmt: skip


def _shares(cfg: Config) -> tuple[SkellamShares, float]:
    """Distributed DP's noise calibration and the quantiser's clipping range."""
    p = cfg.privacy
    assert p is not None
    if p.noise_multiplier is None:
        raise ConfigError("privacy.mode = 'distributed' needs privacy.noise_multiplier")
    try:
        shares = SkellamShares(p.noise_multiplier, p.clip_norm, p.dropout_tolerance)
    except ValueError as e:
        raise ConfigError(f"privacy: {e}") from None
    return shares, p.clip_norm if p.clipping_range is None else p.clipping_range


def _deployed(cfg: Config, rate: float) -> Stage:
    """The aggregator's distributed-DP stage: it accounts the noisy sums."""
    p = cfg.privacy
    assert p is not None
    shares, clipping_range = _shares(cfg)
    return DeployedDistributedDP(
        shares, 2 * clipping_range / (p.quantization_range - 1), p.delta,
        target_epsilon=p.target_epsilon, sampling_rate=rate, accountant=p.accountant,
    )  # fmt: skip


def deployed_secagg(cfg: Config) -> SecAggSettings | None:
    """The network aggregator's SecAgg+ settings for ``privacy.mode = "distributed"`` (None
    for any other run): the ``[privacy]`` section's protocol keys and noise, and
    ``[runtime.secagg]``'s ``stage_timeout``; a protocol key that ``[runtime.secagg]`` sets
    to another value is refused, naming both."""
    p = cfg.privacy
    if p is None or p.mode != "distributed":
        return None
    shares, clipping_range = _shares(cfg)
    ours = {
        "num_shares": p.num_shares,
        "reconstruction_threshold": p.reconstruction_threshold,
        "clipping_range": clipping_range,
        "quantization_range": p.quantization_range,
    }
    sa = cfg.runtime.secagg
    if sa is not None:
        for key in sorted(sa.model_fields_set & ours.keys()):
            if getattr(sa, key) != ours[key]:
                raise ConfigError(
                    f"runtime.secagg.{key} = {getattr(sa, key)!r} differs from the privacy "
                    f"section's {ours[key]!r}: with privacy.mode = 'distributed' [privacy] "
                    f"sets the protocol; leave runtime.secagg.{key} out"
                )
    return SecAggSettings(
        num_shares=p.num_shares,
        reconstruction_threshold=p.reconstruction_threshold,
        clipping_range=clipping_range,
        quantization_range=p.quantization_range,
        stage_timeout=30.0 if sa is None else sa.stage_timeout,
        modulus=p.modulus,
        noise=shares,
    )
