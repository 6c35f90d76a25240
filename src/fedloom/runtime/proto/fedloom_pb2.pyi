"""Types of the generated messages (``fedloom.proto``), for mypy; the code is generated."""

from collections.abc import Iterable
from typing import ClassVar, Self

class Message:  # google.protobuf is untyped here: the methods fedloom calls
    def SerializeToString(self) -> bytes: ...
    @classmethod
    def FromString(cls, s: bytes) -> Self: ...
    def HasField(self, name: str) -> bool: ...
    def WhichOneof(self, name: str) -> str | None: ...

class CheckInRequest(Message):
    task_id: str
    client_id: str
    token: str
    num_samples: int
    def __init__(
        self, *, task_id: str = ..., client_id: str = ..., token: str = ..., num_samples: int = ...
    ) -> None: ...

class CheckInReply(Message):
    accepted: bool
    reason: str
    seed: int
    spec_json: str
    chunk_size: int
    heartbeat_s: float
    duplicate: bool
    bulk_port: int
    def __init__(
        self,
        *,
        accepted: bool = ...,
        reason: str = ...,
        seed: int = ...,
        spec_json: str = ...,
        chunk_size: int = ...,
        heartbeat_s: float = ...,
        duplicate: bool = ...,
        bulk_port: int = ...,
    ) -> None: ...

class PollRequest(Message):
    task_id: str
    client_id: str
    token: str
    busy: bool
    def __init__(
        self, *, task_id: str = ..., client_id: str = ..., token: str = ..., busy: bool = ...
    ) -> None: ...

class Instruction(Message):
    WAIT: ClassVar[int]
    TRAIN: ClassVar[int]
    STOP: ClassVar[int]
    kind: int
    round: int
    version: int
    config_json: str
    wait_s: float
    task_id: str
    secagg: SecAggParams
    def __init__(
        self,
        *,
        kind: int = ...,
        round: int = ...,
        version: int = ...,
        config_json: str = ...,
        wait_s: float = ...,
        task_id: str = ...,
        secagg: SecAggParams | None = ...,
    ) -> None: ...

class DownloadRequest(Message):
    task_id: str
    client_id: str
    token: str
    round: int
    version: int
    def __init__(
        self,
        *,
        task_id: str = ...,
        client_id: str = ...,
        token: str = ...,
        round: int = ...,
        version: int = ...,
    ) -> None: ...

class Chunk(Message):
    task_id: str
    client_id: str
    token: str
    round: int
    version: int
    num_samples: int
    metrics_json: str
    total_bytes: int
    data: bytes
    def __init__(
        self,
        *,
        task_id: str = ...,
        client_id: str = ...,
        token: str = ...,
        round: int = ...,
        version: int = ...,
        num_samples: int = ...,
        metrics_json: str = ...,
        total_bytes: int = ...,
        data: bytes = ...,
    ) -> None: ...

class UploadReply(Message):
    accepted: bool
    reason: str
    def __init__(self, *, accepted: bool = ..., reason: str = ...) -> None: ...

class SecAggParams(Message):
    session: int
    index: int
    num_clients: int
    vector_length: int
    num_shares: int
    reconstruction_threshold: int
    clipping_range: float
    quantization_range: int
    modulus: int
    graph_seed: int
    stage_timeout_s: float
    distributed_dp: bool
    dp_clip_norm: float
    dp_noise_multiplier: float
    dp_dropout_tolerance: float
    def __init__(
        self,
        *,
        session: int = ...,
        index: int = ...,
        num_clients: int = ...,
        vector_length: int = ...,
        num_shares: int = ...,
        reconstruction_threshold: int = ...,
        clipping_range: float = ...,
        quantization_range: int = ...,
        modulus: int = ...,
        graph_seed: int = ...,
        stage_timeout_s: float = ...,
        distributed_dp: bool = ...,
        dp_clip_norm: float = ...,
        dp_noise_multiplier: float = ...,
        dp_dropout_tolerance: float = ...,
    ) -> None: ...

class SecAggKeys(Message):
    client: int
    cipher_public_key: bytes
    mask_public_key: bytes
    seed_commitment: bytes
    def __init__(
        self,
        *,
        client: int = ...,
        cipher_public_key: bytes = ...,
        mask_public_key: bytes = ...,
        seed_commitment: bytes = ...,
    ) -> None: ...

class SecAggShare(Message):
    sender: int
    receiver: int
    nonce: bytes
    ciphertext: bytes
    def __init__(
        self, *, sender: int = ..., receiver: int = ..., nonce: bytes = ..., ciphertext: bytes = ...
    ) -> None: ...

class SecAggOwnedShare(Message):
    owner: int
    share: bytes
    def __init__(self, *, owner: int = ..., share: bytes = ...) -> None: ...

class SecAggShares(Message):
    shares: list[SecAggShare]
    def __init__(self, *, shares: Iterable[SecAggShare] = ...) -> None: ...

class SecAggMasked(Message):
    masked_with: list[int]
    vector: bytes
    offset: int
    def __init__(
        self, *, masked_with: Iterable[int] = ..., vector: bytes = ..., offset: int = ...
    ) -> None: ...

class SecAggIds(Message):
    survivors: list[int]
    dropped: list[int]
    def __init__(self, *, survivors: Iterable[int] = ..., dropped: Iterable[int] = ...) -> None: ...

class SecAggUnmask(Message):
    seed_shares: list[SecAggOwnedShare]
    key_shares: list[SecAggOwnedShare]
    def __init__(
        self,
        *,
        seed_shares: Iterable[SecAggOwnedShare] = ...,
        key_shares: Iterable[SecAggOwnedShare] = ...,
    ) -> None: ...

class SecAggNeighbours(Message):
    keys: list[SecAggKeys]
    def __init__(self, *, keys: Iterable[SecAggKeys] = ...) -> None: ...

class SecAggRequest(Message):
    task_id: str
    client_id: str
    token: str
    session: int
    index: int
    stage: int
    advertise: SecAggKeys
    share_keys: SecAggShares
    masked_input: SecAggMasked
    unmask: SecAggUnmask
    def __init__(
        self,
        *,
        task_id: str = ...,
        client_id: str = ...,
        token: str = ...,
        session: int = ...,
        index: int = ...,
        stage: int = ...,
        advertise: SecAggKeys | None = ...,
        share_keys: SecAggShares | None = ...,
        masked_input: SecAggMasked | None = ...,
        unmask: SecAggUnmask | None = ...,
    ) -> None: ...

class SecAggReply(Message):
    WAIT: ClassVar[int]
    NEXT: ClassVar[int]
    DONE: ClassVar[int]
    REFUSED: ClassVar[int]
    ABORTED: ClassVar[int]
    kind: int
    reason: str
    neighbour_keys: SecAggNeighbours
    forwarded_shares: SecAggShares
    unmask_request: SecAggIds
    def __init__(
        self,
        *,
        kind: int = ...,
        reason: str = ...,
        neighbour_keys: SecAggNeighbours | None = ...,
        forwarded_shares: SecAggShares | None = ...,
        unmask_request: SecAggIds | None = ...,
    ) -> None: ...
