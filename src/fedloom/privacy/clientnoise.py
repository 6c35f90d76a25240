"""A deployed client's side of local DP and DP-SGD: its own secret noise seed, and its check
of the privacy parameters that come with the aggregator's work.

In the simulation the clients' noise derives from the run seed: one trusted party runs
everything, and the seed makes the run reproducible. Over the network the aggregator chooses
the run seed, so noise derived from it could be regenerated and subtracted. A deployed client
therefore puts a seed of its *own* into every client-side DP part it runs: 63 bits from
:mod:`secrets`, drawn when the client starts and never sent, or, for tests and reproducible
runs only, the seed it was started with (``fedloom client --noise-seed N`` or
``FEDLOOM_NOISE_SEED``), which voids the guarantee against an aggregator that learns it.
Work that carries a ``noise_seed`` of its own is refused: that is the aggregator's seed.

The parameters travel with the work (the round's client part and its options) and are
checked before any training: they must build the part (finite, in range), the noise must be
on (z > 0: the aggregator cannot switch it off), and when the client's own config names the
mode, the work must run that part with the config's values.
"""

from __future__ import annotations

import secrets
from typing import Any

from ..algorithms.client import build_client_algorithm
from ..errors import FedloomError
from .clientdp import ClientDPPart, check_noise_seed

#: the client-side DP parts, whose noise seed is the client's own
PARTS = ("local_dp", "dpsgd")
#: what must equal the client's own config (those of the options the expectation names)
COMPARED = ("noise_multiplier", "clip_norm", "delta", "accountant", "loss_reduction")


class ClientNoise:
    """One deployed client's noise seed and its expectation of the work's DP part.

    Args:
        seed: a fixed client-local seed (tests, reproducibility; voids the guarantee against
            an aggregator that learns it); None: a secret from :mod:`secrets`.
        expected: the part the client's own config asks for, ``{"name": "local_dp",
            "noise_multiplier": ..., ...}``; None: run whatever DP part the work names.
        distributed: the ``[privacy]`` values of a ``mode = "distributed"`` config
            (``{"noise_multiplier": ..., "clip_norm": ..., ...}``), which a secure round's
            parameters must carry (:func:`fedloom.runtime.secagg_client.check_expected`).
    """

    def __init__(
        self,
        seed: int | None = None,
        expected: dict[str, Any] | None = None,
        *,
        distributed: dict[str, float] | None = None,
    ):
        checked = check_noise_seed(seed)  # ValueError naming it
        self.fixed = checked is not None
        self._seed = secrets.randbits(63) if checked is None else checked
        self.expected = None if expected is None else dict(expected)
        self.distributed = None if distributed is None else dict(distributed)

    def __repr__(self) -> str:  # never the seed: it may end up in a log
        return f"ClientNoise(fixed={self.fixed}, expected={self.expected})"

    def take(self, config: dict[str, Any], client_id: int) -> dict[str, Any]:
        """A round's wire JSON with this client's noise seed in its DP parts; FedloomError,
        before any training, for work this client must not do."""
        algorithm = config.get("algorithm")
        want = self.expected
        if want is not None and (
            not isinstance(algorithm, dict) or algorithm.get("name") != want["name"]
        ):
            got = algorithm.get("name") if isinstance(algorithm, dict) else None
            raise FedloomError(
                f"client {client_id}: this client's config asks for client part "
                f"{want['name']!r} (privacy.mode), but the aggregator's work runs {got!r}: "
                "not training without the noise"
            )
        if not isinstance(algorithm, dict):
            return config
        return {**config, "algorithm": self._own(algorithm, client_id, want)}

    def _own(
        self, part: dict[str, Any], client_id: int, want: dict[str, Any] | None
    ) -> dict[str, Any]:
        name = part.get("name")
        if name not in PARTS:
            return part
        where = f"client {client_id}: the aggregator's {name} part"
        if "noise_seed" in part:
            raise FedloomError(
                f"{where} carries a noise_seed: a deployed client draws its noise from its "
                "own seed, never from one the aggregator knows"
            )
        options = {k: v for k, v in part.items() if k != "name"}
        if isinstance(options.get("inner"), dict):
            options["inner"] = self._own(options["inner"], client_id, None)
        options["noise_seed"] = self._seed
        try:
            built = build_client_algorithm(str(name), options)
        except (TypeError, ValueError) as e:
            raise FedloomError(f"{where} is refused: {e}") from None
        assert isinstance(built, ClientDPPart)
        if not built.noise_multiplier > 0:
            raise FedloomError(
                f"{where} has noise_multiplier = 0: clipping only, no guarantee; a deployed "
                "client adds noise or does not train"
            )
        for key in COMPARED:
            if want is not None and key in want and want[key] != getattr(built, key):
                raise FedloomError(
                    f"{where} has {key} = {getattr(built, key)!r}, this client's config "
                    f"{want[key]!r} (privacy.{key}): run the same config on both sides"
                )
        return {"name": name, **options}
