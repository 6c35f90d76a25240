"""Chunked model transfer: round trips, size limits, and a >100 MB model through the server."""

from __future__ import annotations

import gc
import json
import threading

import pytest
import torch
from torch import nn

from fedloom import FedAvg, Federation, ParamSpec, Task, WireError, encode
from fedloom.algorithms.base import RoundPlan
from fedloom.runtime import AggregatorServer, RuntimeClient
from fedloom.runtime.fields import bulk_head
from fedloom.runtime.proto import fedloom_pb2 as pb
from fedloom.runtime.transport import ModelHeader, encode_chunks, iter_chunks, join_chunks

from .conftest import check_in, download, poll_for_train, stub_for, upload

DATA = bytes(range(256)) * 3 + b"tail"  # 772 bytes: not a multiple of 7


@pytest.mark.parametrize("chunk_size", [1, 7, 256, 10_000])
def test_chunks_round_trip(chunk_size):
    chunks = list(iter_chunks(DATA, chunk_size, client_id="3", round=5, version=4))
    assert len(chunks) == -(-len(DATA) // chunk_size)
    assert all(len(c.data) <= chunk_size for c in chunks)
    head = chunks[0]
    assert (head.total_bytes, head.client_id, head.round, head.version) == (len(DATA), "3", 5, 4)
    assert all(c.total_bytes == 0 and c.client_id == "" for c in chunks[1:])  # header once
    got_head, got = join_chunks(iter(chunks), max_bytes=len(DATA))
    assert bytes(got) == DATA
    assert (got_head.client_id, got_head.round, got_head.version) == ("3", 5, 4)


def test_chunks_of_a_memoryview_and_of_nothing():
    _, got = join_chunks(iter_chunks(memoryview(DATA), 7), len(DATA))
    assert bytes(got) == DATA
    chunks = list(iter_chunks(b"", 7, client_id="1", round=2))
    assert len(chunks) == 1 and chunks[0].total_bytes == 0 and chunks[0].data == b""
    head, got = join_chunks(chunks, max_bytes=0)
    assert bytes(got) == b"" and head.client_id == "1" and head.round == 2



def test_a_model_header_reads_back_the_same_on_both_channels():
    """One header for the gRPC chunks and the bulk port: the aggregator reads the same fields
    from either, and the chunks are the bytes encode_chunks makes from those fields."""
    header = ModelHeader("t", 3, 2, client_id="5", token="k", num_samples=7, metrics_json="{}")
    chunks = list(header.chunks(DATA, 100))
    assert chunks == list(
        encode_chunks(DATA, 100, task_id="t", round=3, version=2, client_id="5", token="k",
                      num_samples=7, metrics_json="{}")
    )  # fmt: skip
    head, data = join_chunks(chunks, len(DATA))
    assert bytes(data) == DATA
    from_bulk, op = bulk_head(header.bulk("upload", total_bytes=len(DATA)))
    assert op == "upload" and from_bulk == head
    assert from_bulk.num_samples == 7 and from_bulk.client_id == "5" and from_bulk.round == 3

def test_iter_chunks_refuses_a_chunk_size_below_one():
    with pytest.raises(ValueError, match="chunk_size"):
        list(iter_chunks(DATA, 0))


def test_join_chunks_refuses_a_stream_announcing_more_than_the_limit():
    consumed = []

    def stream():
        for c in iter_chunks(DATA, 7):
            consumed.append(c)
            yield c

    with pytest.raises(WireError, match=f"announces {len(DATA)} bytes; the limit is 100"):
        join_chunks(stream(), max_bytes=100)
    assert len(consumed) == 1  # refused on the header, before the rest arrives


def test_join_chunks_refuses_a_negative_announcement():
    with pytest.raises(WireError, match="announces -5 bytes"):
        join_chunks([pb.Chunk(total_bytes=-5, data=b"x")], max_bytes=100)


def test_join_chunks_refuses_more_bytes_than_announced():
    chunks = list(iter_chunks(DATA, 7))
    chunks.append(pb.Chunk(data=b"extra"))
    with pytest.raises(WireError, match=f"more than the {len(DATA)} bytes it announced"):
        join_chunks(chunks, max_bytes=10 * len(DATA))
    # a lying header: announces 3 bytes, brings 7 in its first chunk
    with pytest.raises(WireError, match="more than the 3 bytes"):
        join_chunks([pb.Chunk(total_bytes=3, data=b"1234567")], max_bytes=100)


def test_join_chunks_refuses_a_stream_that_ends_early():
    chunks = list(iter_chunks(DATA, 7))[:-2]
    with pytest.raises(WireError, match=f"ended after {7 * len(chunks)} of {len(DATA)}"):
        join_chunks(chunks, max_bytes=len(DATA))


def test_join_chunks_refuses_an_empty_stream():
    with pytest.raises(WireError, match="empty stream"):
        join_chunks([], max_bytes=10)


def test_a_model_over_100_mb_downloads_and_uploads_intact(servers):
    """nn.Linear(5000, 5500) in float32 is 110 MB: streamed in 256 KiB chunks both ways."""
    spec = ParamSpec.from_module(nn.Linear(5000, 5500))
    assert spec.nbytes > 100 * 1024 * 1024
    g = torch.Generator().manual_seed(0)
    global_params = torch.randn(spec.numel, generator=g)
    chunk = 256 * 1024
    server = AggregatorServer(spec, address="127.0.0.1:0", chunk_size=chunk)
    servers.append(server.start())
    with stub_for(server.address) as stub:
        reply = check_in(stub, 0)
        assert reply.accepted and reply.chunk_size == chunk
        assert ParamSpec.from_json(json.loads(reply.spec_json)) == spec
        server.distribute(1, RoundPlan([0]), global_params)
        ins = poll_for_train(stub, 0)
        assert (ins.kind, ins.round, ins.version) == (pb.Instruction.TRAIN, 1, 0)

        # Download: the stream is made of many chunks none above chunk_size, and decodes equal
        request = pb.DownloadRequest(task_id="fedloom", client_id="0", round=1, version=0)
        sizes = [len(c.data) for c in stub.Download(request, timeout=120)]
        assert len(sizes) > 400 and max(sizes) == chunk
        got = download(stub, 0, ins, spec)
        assert torch.equal(got, global_params)
        del got
        gc.collect()

        # Upload: a different model of the same spec arrives bit-exact at the aggregator
        new = global_params.mul_(-0.5).add_(1.0)  # in place: one big buffer less
        reply = upload(stub, 0, encode(new, spec), round=1, version=0, chunk_size=chunk)
        assert reply.accepted, reply.reason
        updates = list(server.collect())
        assert [u.client_id for u in updates] == [0]
        assert updates[0].num_samples == 10 and updates[0].round == 1
        assert torch.equal(updates[0].params, new)
        assert server.rejections == []


class BigTask(Task):
    """One client, four samples, a 110 MB model: the transfer is the work."""

    lr = 0.1

    def build_model(self) -> nn.Module:
        return nn.Linear(5000, 5500)

    @property
    def num_clients(self) -> int:
        return 1

    def num_samples(self, client_id: int) -> int:
        return 4

    def train_loader(self, client_id, ctx):
        g = torch.Generator().manual_seed(client_id)
        yield torch.randn(4, 5000, generator=g), torch.tensor([0, 1, 2, 5499])

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return {}


def test_a_runtime_client_trains_a_model_over_100_mb_like_the_simulation(servers):
    chunk = 256 * 1024
    task = BigTask()
    holder: dict[str, RuntimeClient] = {}

    def backend(spec: ParamSpec) -> AggregatorServer:
        assert spec.nbytes > 100 * 1024 * 1024
        server = AggregatorServer(spec, address="127.0.0.1:0", chunk_size=chunk)
        servers.append(server.start())
        holder["client"] = RuntimeClient(task, server.address, 0)
        return server

    fed = Federation(task, FedAvg(), backend, rounds=1, seed=3)
    server = fed.backend
    client = holder["client"]
    thread = threading.Thread(target=client.run, daemon=True)
    thread.start()
    net = fed.run().params.clone()
    server.finish()
    thread.join(30)
    assert not thread.is_alive() and client.rounds_done == 1
    assert client.chunk_size == chunk  # the client streams in the aggregator's chunk size
    del fed, server
    gc.collect()
    sim = Federation(task, FedAvg(), rounds=1, seed=3).run().params
    assert torch.equal(net, sim)
