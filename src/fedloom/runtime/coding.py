"""What a data holder reads and sends: the plain wire format, or a compressed direction's packets.

Without ``[compression]`` (or in a direction without a chain) a model is fedloom's wire format
(:func:`~fedloom.wire.decode_bundle` / :func:`~fedloom.wire.encode_bundle`). With a down chain
the round's model is the aggregator's packet, decoded with this client's own chain
(:meth:`~fedloom.compression.link.Compression.unpack_model`); with an up chain the update is
packed against the global the client decoded, its error-feedback residual kept under
:data:`~fedloom.compression.link.STATE_KEY` in the engine's state for this client, as the
simulation keeps it (so a network run equals the simulation bit for bit). An aggregator that
restarts resumes from its last checkpoint and hands out the round it lost again: a client that
checked in again and is asked for a round it already trained starts from the residual it had
before that round (kept for the last round trained), as the checkpointed simulation would.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..compression.link import STATE_KEY, Compression, codec_state
from ..compression.packet import MAGIC
from ..errors import FedloomError, WireError
from ..params import ParamSpec
from ..update import ClientUpdate
from ..wire import decode_bundle, encode_bundle, encode_parts
from .transport import Bytes

log = logging.getLogger("fedloom.client")


class ClientCoding:
    """A client's two directions; ``compression`` None: the plain wire format both ways."""

    def __init__(self, client_id: int, compression: Compression | None = None):
        self.client_id = client_id
        self.compression = compression if compression else None
        self._before: tuple[int, dict[str, torch.Tensor] | None] | None = None
        self._again = False  # checked in again since the last round trained

    def state_dict(self) -> dict[str, Any]:
        """What a restarted client needs to re-encode the round it trained last: that round
        and the residual it had before it (``before``; None before any round)."""
        before = self._before
        return {"before": None if before is None else [int(before[0]), before[1]]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s ``before``, as after a check-in that follows training:
        asked again for that round, the client encodes it from the residual before it."""
        before = state["before"]
        self._before = None if before is None else (int(before[0]), before[1])
        self._again = before is not None

    def checked_in(self, seed: int) -> None:
        """Draw as the aggregator's run seed says (sent at every check-in), as the simulation
        does; a check-in after training may mean the aggregator lost rounds."""
        if self.compression is not None:
            self.compression.seed = seed
        self._again = self._before is not None

    def model(
        self, rnd: int, data: Bytes, spec: ParamSpec
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(global model, plan tensors) of a downloaded model."""
        c = self.compression
        if c is None or c.down is None:
            if bytes(memoryview(data)[: len(MAGIC)]) == MAGIC:
                raise FedloomError(
                    f"client {self.client_id}: the aggregator sends round {rnd}'s model "
                    "compressed (compression.down) and this client's config has no "
                    "compression.down; run the same config on both sides"
                )
            params, tensors, _ = decode_bundle(data, spec, copy=False)
            return params, tensors
        try:
            params, tensors = c.unpack_model(data, spec.numel)
        except WireError as e:
            raise FedloomError(
                f"client {self.client_id}: the model of round {rnd} does not decode with this "
                f"client's compression.down = {c.down.specs} ({e}); run the same config on "
                "both sides"
            ) from None
        return params.to(spec.dtype), {n: t.to(spec.dtype) for n, t in tensors.items()}

    def update(
        self, rnd: int, engine: Any, received: torch.Tensor, update: ClientUpdate
    ) -> tuple[bytes, memoryview]:
        """The bytes of ``update`` in two parts (a header and the values, sent one after the
        other); ``received`` is the global the client trained from. The residual is kept in
        ``engine.states`` for this client, beside its other state."""
        cid = self.client_id
        extras = update.extras.get("tensors") or {}
        if self.compression is None or self.compression.up is None:  # no residual to keep:
            # a relay's EdgeLoop (compression is refused with a topology) has no client states
            return self.encode(rnd, engine.spec, received, update.params, extras, {})
        state = engine.states.get(cid, {})
        parts = self.encode(rnd, engine.spec, received, update.params, extras, state)
        if STATE_KEY in state:
            engine.states[cid] = state
        return parts

    def encode(
        self,
        rnd: int,
        spec: ParamSpec,
        received: torch.Tensor,
        params: torch.Tensor,
        extras: dict[str, torch.Tensor],
        state: dict[str, Any],
    ) -> tuple[bytes, memoryview]:
        """The bytes of a trained model ``params`` (and the strategy's ``extras``); ``state``
        is this client's per-client state, where the error-feedback residual lives (an own
        loop's :attr:`~fedloom.runtime.ownloop.Connection.client_state`)."""
        c, meta = self.compression, {"round": rnd}
        if c is None or c.up is None:
            if extras:  # e.g. SCAFFOLD's control-variate change
                return encode_bundle(params, spec, extras, meta), memoryview(b"")
            return encode_parts(params, spec, meta)
        if not bool(torch.isfinite(params).all()):
            # nothing to encode: the aggregator refuses the empty packet, the round goes on
            log.warning("client %d: round %d: the update is not finite", self.client_id, rnd)
            return b"", memoryview(b"")
        saved = state.get(STATE_KEY)
        if self._again and self._before is not None and rnd <= self._before[0]:
            saved = self._before[1]  # the aggregator lost that round: train it from before
        self._before, self._again = (rnd, saved), False
        codec = codec_state(saved)
        data = c.pack_update(rnd, self.client_id, params.float(), received.float(), codec, extras)
        if len(codec):  # the residual, where the client keeps its other state
            state[STATE_KEY] = codec.state_dict()
        return data, memoryview(b"")

    def refused(self, rnd: int, reason: str) -> None:
        """Raise one clear line when the aggregator refused a plain upload because it expects
        the up chain's packets (its config has ``compression.up``, this client's has none)."""
        if (self.compression is None or self.compression.up is None) and reason.startswith(
            "not a compressed packet"
        ):
            raise FedloomError(
                f"client {self.client_id}: the aggregator expects round {rnd}'s update "
                "compressed (compression.up) and this client's config has no compression.up; "
                "run the same config on both sides"
            )
