"""A hostile insider (client 3, with its own valid token) against a real run.

One run of ``fedloom server``: honest client processes 0-2 and client 3 driven from this
test, every client sampled each round, 5 rounds. Client 3 tries, in order:

* before round 1: check-ins declaring 2^62, 0 and -5 samples; ids " 3 ", "03" and "٣"; bulk headers
  whose round is Infinity, 1e400, "3" and true;
* round 1: a flood of 150 concurrent uploads of one (valid) update, 90 over gRPC and 60 over
  the bulk port, while the server's peak memory is watched;
* rounds 2-4: one upload each with metrics_json a JSON list, a string loss (over the bulk
  port), and num_samples 2^62 (with values of 3e38);
* round 5: after checking in again as holding 10^9 samples (allowed), an update of finite
  values of 3e38 weighted by 10^9: the aggregate overflows and the round is rolled back.

The documented outcome: refusals counted by kind, bad updates rejected and counted, exactly
one upload of the flood accepted, memory bounded, the model finite, the run finished.
"""

from __future__ import annotations

import json

from chaos_attacks import (
    bad_bulk_headers,
    bad_checkins,
    bad_field_upload,
    bad_ids,
    flood_uploads,
    grpc_upload,
    poisoned_payload,
)
from runtime.conftest import (
    check_in,
    download_bytes,
    free_port,
    poll_for_train,
    read_metrics,
    run_dir,
    saved_params,
    stub_for,
    wait_until,
    write_config,
)

from fedloom import ParamSpec, load_checkpoint

from .conftest import (
    TRACEBACK,
    assert_finite,
    refused_total,
    small_config,
    start_clients,
    tokens,
    vm_hwm_mib,
)

N_GRPC, N_BULK = 90, 60
MAX_CONCURRENT_UPLOADS = 2
# The server's peak memory (VmHWM) after the flood may exceed its peak before it (the baseline,
# measured in the same run before the attack) by the receive room MAX_CONCURRENT_UPLOADS x
# max_update_bytes (2 x 8.7 MiB) plus SLACK_MIB for gRPC's buffers of the refused streams,
# threads for the bulk connections and the allocator. Measured: the flood round raised the
# peak by 23-29 MiB (287 -> 310-316 MiB; bound 352). Were the flood's bulk uploads all
# received at once, they alone would take N_BULK x the model (60 x 2.6 MiB = 153 MiB).
SLACK_MIB = 48
DECLARED = 1250  # client 3's samples, as declared at check-in
BIG_WEIGHT = 10**9  # runtime.max_samples: the most a client may declare


def test_a_hostile_insider_is_refused_counted_and_the_model_stays_finite(tmp_path, procs):
    address, bulk_port = f"127.0.0.1:{free_port()}", free_port()
    host = "127.0.0.1"
    toks = tokens(4)
    cfg = small_config(
        tmp_path / "net",
        "insider",
        clients=4,
        rounds=5,
        tokens=toks,
        bulk_port=bulk_port,
        max_concurrent_uploads=MAX_CONCURRENT_UPLOADS,
        max_samples=BIG_WEIGHT,
    )
    cfg["model"] = {"name": "mlp", "options": {"hidden": 512}}  # 2.6 MiB: memory shows
    config = write_config(tmp_path / "insider.json", cfg)
    task, tok = cfg["runtime"]["task_id"], toks["3"]
    me = dict(task_id=task, client_id="3", token=tok)
    server = procs.fedloom("aggregator", "server", str(config), "--address", address)
    wait_until(lambda: "listening on" in server.output(), 60, "the aggregator to listen")
    clients = start_clients(procs, config, address, range(3))

    with stub_for(address) as stub:
        # -- before round 1: fields and ids that must be refused up front ----------------------
        assert bad_checkins(address, **me) == {
            "num_samples 0": "INVALID_ARGUMENT",
            "num_samples -5": "INVALID_ARGUMENT",
            "num_samples 4611686018427387904": "INVALID_ARGUMENT",
        }
        assert bad_ids(address, **me) == {
            " 3 ": "INVALID_ARGUMENT",
            "03": "INVALID_ARGUMENT",
            "٣": "INVALID_ARGUMENT",
        }
        replies = bad_bulk_headers(host, bulk_port, **me)
        codes = {k: (r or {}).get("code") for k, r in replies.items()}
        assert codes == dict.fromkeys(replies, "INVALID_ARGUMENT"), replies
        reply = check_in(stub, 3, task, tok, samples=DECLARED)
        spec = ParamSpec.from_json(json.loads(reply.spec_json))

        # -- round 1: 150 uploads at once; one is taken ---------------------------------------
        ins = poll_for_train(stub, 3, task, timeout=120, token=tok)
        assert ins.round == 1
        model = download_bytes(stub, 3, ins, spec, task, tok)
        baseline = vm_hwm_mib(server.popen.pid)
        common = dict(me, round=ins.round, version=ins.version, num_samples=DECLARED)
        flood = flood_uploads(
            address, model, n_grpc=N_GRPC, n_bulk=N_BULK, bulk_port=bulk_port, **common
        )
        peak = vm_hwm_mib(server.popen.pid)
        assert flood["accepted"] == 1, flood
        assert sum(flood.values()) == N_GRPC + N_BULK, flood
        # "stale": on a loaded machine round 1 may close (the other clients done) mid-flood
        assert set(flood) <= {"accepted", "duplicate", "stale", "refused:RESOURCE_EXHAUSTED"}, flood
        max_update_bytes = spec.nbytes * 3 + (1 << 20)  # the server's default room
        bound = baseline + MAX_CONCURRENT_UPLOADS * max_update_bytes / 2**20 + SLACK_MIB
        assert peak <= bound, f"server peak {peak:.0f} MiB > {bound:.0f} (base {baseline:.0f})"

        # -- rounds 2-4: one bad field each -----------------------------------------------------
        for rnd, kind, payload, via_bulk in (
            (2, "metrics a JSON list", model, False),
            (3, "loss a string", model, True),
            (4, "num_samples 2^62", poisoned_payload(spec), False),
        ):
            ins = poll_for_train(stub, 3, task, timeout=60, token=tok)
            assert ins.round == rnd
            out = bad_field_upload(
                address,
                kind,
                payload,
                **dict(common, round=rnd, version=ins.version),
                bulk_port=bulk_port if via_bulk else 0,
            )
            assert out.kind == "refused" and not out.reason.startswith("duplicate"), (kind, out)

        # -- round 5: a declared (allowed) huge weight on finite 3e38 values ------------------
        check_in(stub, 3, task, tok, samples=BIG_WEIGHT)
        ins = poll_for_train(stub, 3, task, timeout=60, token=tok)
        assert ins.round == 5
        poison = dict(common, round=5, version=ins.version, num_samples=BIG_WEIGHT)
        assert grpc_upload(address, poisoned_payload(spec), **poison).kind == "accepted"

    # (a) the run finishes
    assert server.wait(120) == 0, procs.logs()
    for c in clients.values():
        assert c.wait(60) == 0, procs.logs()

    # (b) bad updates rejected and counted, the poisoned round rolled back, the model finite
    directory = run_dir(cfg)
    metrics = read_metrics(directory)
    assert [(r["round"], r["clients"], r["rejected"]) for r in metrics] == [
        (1, 4, 0),
        (2, 3, 1),
        (3, 3, 1),
        (4, 3, 1),
        (5, 0, 4),  # rolled back: nothing of the round counts
    ]
    assert [r["round"] for r in metrics if "aggregate_rejected" in r] == [5]
    assert "client 3 (|sum| inf)" in metrics[4]["aggregate_rejected"]
    assert_finite(saved_params(directory, spec), "the final model")
    assert_finite(load_checkpoint(directory / "checkpoint.pt")["params"], "the checkpoint")

    # (d) logged by kind, counted, no traceback
    refused = refused_total(metrics)
    assert refused["bad_samples"] == 3 and refused["bad_id"] == 3, refused
    assert refused["malformed"] == 5, refused  # 4 bulk headers, the "٣" in a message body
    late = flood.get("stale", 0)  # refused as stale, not counted as refusals of a kind
    assert refused["duplicate"] + refused["too_many_calls"] == N_GRPC + N_BULK - 1 - late, refused
    out = server.output()
    for line in (
        "refused (bad_samples): client 3: num_samples 4611686018427387904 is not in [1, 10000",
        "refused (bad_id): CheckIn: client id must be a decimal integer, got ' 3 '",
        "refused (malformed): client 3: the message names another client or task",  # the "٣"
        "refused (duplicate): client 3: a second upload for round 1",
        "refused (too_many_calls): Upload: client 3 has 2 Upload calls open already",
        "round 2: rejected update of client 3: metrics must be an object of numbers, got list",
        "round 3: rejected update of client 3: metric 'loss' must be a number, got str",
        "round 4: rejected update of client 3: num_samples 4611686018427387904 exceeds the 1250",
        "round 5: the aggregate has NaN or Inf values",
    ):
        assert line in out, line
    assert TRACEBACK not in out
    print(f"flood {dict(flood)}; server peak {baseline:.0f} -> {peak:.0f} MiB (bound {bound:.0f})")
