"""A run's compression: the uplink and downlink chains, and how an update goes through them.

What a client uploads is its *delta* (trained model minus the global it received) when the
up chain is lossy, so a sparsifier keeps the largest changes and a quantiser's scale fits
them; the receiver adds the decoded delta to its own global. A lossless chain (``f32`` and
``zstd``) carries the model itself, so the receiver gets it bit for bit. The downlink carries
the global model, encoded once per round for every client; a sparsifier there is refused (it
would need one residual per receiver). Strategy tensors (SCAFFOLD's control variates, IFCA's
cluster models) travel losslessly in both directions, through the chain's byte codec, and are
counted. Every draw is seeded from (run seed, round, client), so a run repeats bit for bit.

Where it runs: both ends go through :mod:`.packet` (the encoded model and the strategy's
tensors in one checked frame), so a packet's length is what ``bytes_up`` / ``bytes_down``
count, in simulation and over the network alike. The simulation engine
(:class:`~fedloom.simulation.engine.InProcessClients`) calls :meth:`Compression.download` in
``distribute`` and :meth:`Compression.upload` after each client's local training: both halves
at once. The network runtime calls the halves where the bytes are made and read: the server
:meth:`~Compression.pack_model` once per published version
(:class:`~fedloom.runtime.publish.Publisher`), the client :meth:`~Compression.unpack_model` on
receipt and, after training, :meth:`~Compression.pack_update` with its ``CodecState`` kept
under :data:`STATE_KEY` in its engine's per-client state (checkpointed in simulation; in a
client process it survives aggregator restarts, not a restart of the process, as the
client's other state; :mod:`fedloom.runtime.coding`); the server
:meth:`~Compression.unpack_update` against the global of the version the client trained on,
before the update's checks (:class:`~fedloom.runtime.uploads.Uploads`). Each side decodes
with its own configured chain only: a header naming another chain or parameter is refused.
A direction without a chain sends the plain wire format. Relays (a ``[topology]``) do not
encode: :func:`fedloom.compose.engines.build_engine` refuses ``[compression]`` with one.

With privacy (:mod:`fedloom.compose.privacy` refuses what breaks): secure aggregation
quantises and masks the sum itself, so ``compression.up`` with it is refused; central DP clips
and noises the decoded updates on the server, and local DP / DP-SGD noise before the client
encodes, so lossy coding after them is post-processing and the guarantee holds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ..seeding import derive_seed
from .cast import F32
from .chain import Chain
from .encoded import Encoded
from .packet import pack, unpack
from .state import CodecState

Data = bytes | bytearray | memoryview

STATE_KEY = "codec"  # where a client's codec state lives in its per-client state


class Compression:
    """The up and down chains of a run (either may be empty: no compression that way)."""

    def __init__(self, up: Sequence[str] = (), down: Sequence[str] = (), seed: int = 0) -> None:
        self.up = Chain.parse(up) if up else None
        self.down = Chain.parse(down) if down else None
        if self.down is not None and self.down.sparsifier is not None:
            raise ValueError(
                f"compression.down: {self.down.sparsifier.spec()!r} is a sparsifier; the "
                "downlink sends one model to every client and keeps no per-client residual"
            )
        self.seed = seed
        self._extras_up = _lossless(self.up)
        self._extras_down = _lossless(self.down)

    def __bool__(self) -> bool:
        return self.up is not None or self.down is not None

    # -- the two ends of each direction: what a network client and server call -----------------
    def encode_model(self, rnd: int, params: torch.Tensor) -> Encoded:
        """The server's global model for round ``rnd``, once for every client."""
        gen = torch.Generator().manual_seed(derive_seed(self.seed, "compress-down", rnd))
        return (self.down or Chain()).encode(params.detach().reshape(-1), None, gen)

    def decode_model(self, data: Data | Encoded, numel: int) -> torch.Tensor:
        """The global model a client decodes (``WireError`` on bad input)."""
        return (self.down or Chain()).decode(data, numel)

    def encode_update(
        self,
        rnd: int,
        cid: int,
        trained: torch.Tensor,
        received: torch.Tensor,
        state: CodecState,
    ) -> Encoded:
        """Client ``cid``'s upload: its delta from ``received`` (the global it decoded), or
        the model itself through a lossless chain; ``state`` is its error-feedback state."""
        chain = self.up or Chain()
        gen = torch.Generator().manual_seed(derive_seed(self.seed, "compress", rnd, cid))
        flat = trained.detach().reshape(-1)
        x = flat if chain.lossless else flat - received.reshape(-1)
        return chain.encode(x, state, gen)

    def decode_update(self, data: Data | Encoded, server_global: torch.Tensor) -> torch.Tensor:
        """The model the server takes from an upload: its own global plus the decoded delta
        (the decoded model itself for a lossless chain); ``WireError`` on bad input."""
        chain = self.up or Chain()
        values = chain.decode(data, server_global.numel())
        return values if chain.lossless else server_global.reshape(-1) + values

    def encode_tensors(self, tensors: Mapping[str, torch.Tensor], up: bool) -> dict[str, Encoded]:
        """Strategy tensors (plan tensors down, update extras up), lossless, by name."""
        chain, gen = self._extras_up if up else self._extras_down, torch.Generator()
        return {
            n: chain.encode(tensors[n].detach().reshape(-1).float(), None, gen)
            for n in sorted(tensors)
        }

    def decode_tensor(self, data: Data | Encoded, numel: int, up: bool) -> torch.Tensor:
        return (self._extras_up if up else self._extras_down).decode(data, numel)

    # -- whole transfers: the model (or update) and the strategy's tensors in one packet --------
    def pack_model(
        self, rnd: int, params: torch.Tensor, tensors: Mapping[str, torch.Tensor]
    ) -> bytes:
        """What the server sends every client of round ``rnd`` (the plan's ``tensors`` too)."""
        parts = self.encode_tensors(tensors, up=False)
        return pack(self.encode_model(rnd, params).to_bytes(), _bytes(parts))

    def unpack_model(self, data: Data, numel: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(global model, plan tensors) a client decodes; every tensor is ``numel`` long (laid
        out like the model, as the wire format's extras are); ``WireError`` on bad input."""
        model, tensors = unpack(data)
        decoded = {n: self.decode_tensor(t, numel, up=False) for n, t in tensors.items()}
        return self.decode_model(model, numel), decoded

    def pack_update(
        self,
        rnd: int,
        cid: int,
        trained: torch.Tensor,
        received: torch.Tensor,
        state: CodecState,
        tensors: Mapping[str, torch.Tensor] | None = None,
    ) -> bytes:
        """Client ``cid``'s upload (:meth:`encode_update`) with its extras (``tensors``)."""
        update = self.encode_update(rnd, cid, trained, received, state)
        return pack(update.to_bytes(), _bytes(self.encode_tensors(tensors or {}, up=True)))

    def unpack_update(
        self, data: Data, server_global: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(the model the server takes, the extras) of an upload (:meth:`decode_update`);
        ``WireError`` on bad input."""
        model, tensors = unpack(data)
        n = server_global.numel()
        decoded = {name: self.decode_tensor(t, n, up=True) for name, t in tensors.items()}
        return self.decode_update(model, server_global), decoded

    # -- in simulation: both ends at once, through the bytes ---------------------------------
    def download(
        self, rnd: int, params: torch.Tensor, tensors: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
        """(the global model a client decodes, the plan's tensors it decodes, bytes per client)."""
        data = self.pack_model(rnd, params, tensors)
        model, decoded = self.unpack_model(data, params.numel())
        return model, _like(decoded, tensors), len(data)

    def upload(
        self,
        rnd: int,
        cid: int,
        trained: torch.Tensor,
        received: torch.Tensor,
        server_global: torch.Tensor,
        state: CodecState,
        tensors: Mapping[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
        """(the model the server reconstructs, the extras it decodes, bytes sent).

        ``received`` is the global the client trained from (the downlink's decoding),
        ``server_global`` the server's own; ``state`` is the client's error-feedback state.
        """
        data = self.pack_update(rnd, cid, trained, received, state, tensors)
        model, decoded = self.unpack_update(data, server_global)
        return model, _like(decoded, tensors or {}), len(data)


def codec_state(saved: Mapping[str, torch.Tensor] | None) -> CodecState:
    """A client's codec state from its saved tensors (empty on its first round)."""
    state = CodecState()
    if saved:
        state.load_state_dict(dict(saved))
    return state


def _bytes(parts: Mapping[str, Encoded]) -> dict[str, bytes]:
    return {name: enc.to_bytes() for name, enc in parts.items()}


def _like(
    decoded: dict[str, torch.Tensor], sent: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Decoded tensors in the shape and dtype of those sent (the simulation has both)."""
    return {n: t.view_as(sent[n]).to(sent[n].dtype) for n, t in decoded.items()}


def _lossless(chain: Chain | None) -> Chain:
    """The chain strategy tensors travel through: ``f32`` and the chain's byte codec."""
    return Chain([F32(), *([chain.bytes] if chain is not None and chain.bytes else [])])
