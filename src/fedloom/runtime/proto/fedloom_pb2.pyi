"""Types of the generated messages (``fedloom.proto``), for mypy; the code is generated."""

from typing import ClassVar, Self

class Message:  # google.protobuf is untyped here: the methods fedloom calls
    def SerializeToString(self) -> bytes: ...
    @classmethod
    def FromString(cls, s: bytes) -> Self: ...

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
    def __init__(
        self,
        *,
        kind: int = ...,
        round: int = ...,
        version: int = ...,
        config_json: str = ...,
        wait_s: float = ...,
        task_id: str = ...,
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
