"""SecAgg+ refuses malformed, misaddressed, replayed and out-of-order messages, and counts them.

A refused message never breaks the round for the others: its sender counts as dropped.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import numpy as np
import pytest
from numpy.typing import NDArray

from fedloom.privacy.secagg import (
    AdvertiseKeys,
    ClientMessage,
    Dropouts,
    EncryptedShare,
    ForwardedShares,
    MaskedInput,
    SecAggAbort,
    SecAggClient,
    SecAggConfig,
    SecAggRefused,
    SecAggServer,
    ServerMessage,
    ShareKeys,
    UnmaskRequest,
    UnmaskShares,
    client_seed,
    crypto,
    simulate_round,
)

SEED = b"refusal test seed"
Message = ClientMessage | ServerMessage


def config(n: int = 8, k: int = 5, t: int = 3, round: int = 0) -> SecAggConfig:
    return SecAggConfig(num_clients=n, vector_length=500, num_shares=k,
                        reconstruction_threshold=t, round=round)  # fmt: skip


def updates(n: int) -> list[NDArray[np.float64]]:
    rng = np.random.default_rng(0)
    return [rng.uniform(-1, 1, 500) for _ in range(n)]


def assert_sum_of(run_result: object, ups: list[NDArray[np.float64]], who: set[int]) -> None:
    assert run_result is not None
    survivors, total = run_result.survivors, run_result.total  # type: ignore[attr-defined]
    assert set(survivors) == who
    assert np.abs(total - np.sum([ups[i] for i in who], axis=0)).max() < len(who) * 2 / 65535


def share_from(message: ForwardedShares, sender: int) -> EncryptedShare:
    return next(s for s in message.shares if s.sender == sender)


def with_share(message: ForwardedShares, sender: int, share: EncryptedShare) -> ForwardedShares:
    shares = tuple(share if s.sender == sender else s for s in message.shares)
    return dataclasses.replace(message, shares=shares)


def test_an_altered_share_fails_decryption_and_its_receiver_drops_out() -> None:
    cfg, ups = config(), updates(8)
    victim = 0

    def transit(m: Message) -> Message:
        if isinstance(m, ForwardedShares) and m.receiver == victim:
            s = m.shares[0]
            flipped = bytes([s.ciphertext[0] ^ 1]) + s.ciphertext[1:]
            return with_share(m, s.sender, dataclasses.replace(s, ciphertext=flipped))
        return m

    run = simulate_round(cfg, ups, SEED, transit=transit)
    assert run.clients[victim].refused == {"decrypt": 1}
    # the victim masks without that neighbour and says so; the server refuses the mismatch,
    # counts the victim as dropped and removes the masks the others made with it
    assert run.server.refused == {"inconsistent": 1}
    assert_sum_of(run.result, ups, set(range(8)) - {victim})


def test_a_share_for_someone_else_is_refused_whether_relabelled_or_not() -> None:
    cfg, ups = config(), updates(8)
    sent: dict[int, ShareKeys] = {}

    def transit(m: Message) -> Message:
        if isinstance(m, ShareKeys):
            sent[m.sender] = m
        if isinstance(m, ForwardedShares) and m.receiver in (0, 1):
            honest = m.shares[0]
            other = next(s for s in sent[honest.sender].shares if s.receiver not in (0, 1))
            if m.receiver == 0:  # as it is: addressed to another client
                return with_share(m, honest.sender, other)
            # relabelled as if for client 1: encrypted under another key, bound to other ids
            return with_share(m, honest.sender, dataclasses.replace(other, receiver=1))
        return m

    run = simulate_round(cfg, ups, SEED, transit=transit)
    assert run.clients[0].refused == {"misrouted": 1}
    assert run.clients[1].refused == {"decrypt": 1}
    assert run.server.refused == {"inconsistent": 2}
    assert_sum_of(run.result, ups, set(range(2, 8)))


def test_a_share_replayed_from_another_round_or_twice_is_refused() -> None:
    old: dict[int, ForwardedShares] = {}

    def record(m: Message) -> Message:
        if isinstance(m, ForwardedShares):
            old[m.receiver] = m
        return m

    simulate_round(config(round=0), updates(8), SEED, transit=record)

    def replay(m: Message) -> Message:
        if isinstance(m, ForwardedShares) and m.receiver in (2, 3, 4):
            stale = old[m.receiver].shares[0]
            if m.receiver == 2:  # as recorded
                return with_share(m, stale.sender, stale)
            if m.receiver == 3:  # relabelled to this round: the round is in the key and the AD
                return with_share(m, stale.sender, dataclasses.replace(stale, round=1))
            return dataclasses.replace(m, shares=(*m.shares, m.shares[0]))  # twice
        return m

    ups = updates(8)
    run = simulate_round(config(round=1), ups, SEED, transit=replay)
    assert run.clients[2].refused == {"stale_round": 1}
    assert run.clients[3].refused == {"decrypt": 1}
    assert run.clients[4].refused == {"duplicate": 1}  # the first copy was kept
    assert run.server.refused == {"inconsistent": 2}
    assert_sum_of(run.result, ups, set(range(8)) - {2, 3})


def test_share_encryption_is_bound_to_round_sender_and_receiver() -> None:
    """Even under the same keys (a client that reused its seed), another round or other ids
    fail authentication."""
    a, b = crypto.private_key(b"\x01" * 32), crypto.private_key(b"\x02" * 32)
    ab = crypto.shared_secret(a, crypto.public_bytes(b))
    assert ab == crypto.shared_secret(b, crypto.public_bytes(a))
    nonce, text = bytes(12), b"secret share"
    sealed = crypto.encrypt_share(ab, 5, 0, 1, nonce, text)
    assert crypto.decrypt_share(ab, 5, 0, 1, nonce, sealed) == text
    assert crypto.decrypt_share(ab, 4, 0, 1, nonce, sealed) is None  # other round
    assert crypto.decrypt_share(ab, 5, 1, 0, nonce, sealed) is None  # reversed direction
    assert crypto.decrypt_share(ab, 5, 0, 2, nonce, sealed) is None  # other receiver
    c = crypto.private_key(b"\x03" * 32)
    wrong = crypto.shared_secret(c, crypto.public_bytes(a))  # another client's key
    assert crypto.decrypt_share(wrong, 5, 0, 1, nonce, sealed) is None


def test_the_server_refuses_and_counts_bad_client_messages() -> None:
    cfg = config()
    server = SecAggServer(cfg)
    clients = [SecAggClient(cfg, i, client_seed(SEED, 0, i)) for i in range(8)]
    adverts = [c.advertise() for c in clients]
    mistakes: list[tuple[object, str]] = [
        (dataclasses.replace(adverts[0], round=7), "stale_round"),
        (dataclasses.replace(adverts[0], sender=99), "unknown_sender"),
        (dataclasses.replace(adverts[0], sender="0"), "malformed"),  # type: ignore[arg-type]
        (dataclasses.replace(adverts[0], mask_public_key=b"short"), "malformed"),
        (dataclasses.replace(adverts[0], cipher_public_key=bytes(32)), "malformed"),  # low order
        (MaskedInput(0, 0, (), np.zeros(500, np.uint32)), "out_of_order"),
        ("not a message", "malformed"),
    ]
    for message, kind in mistakes:
        with pytest.raises(SecAggRefused, match=kind):
            server.receive(message)  # type: ignore[arg-type]
    for a in adverts:
        server.receive(a)
    with pytest.raises(SecAggRefused, match="duplicate"):
        server.receive(adverts[1])  # replayed within the round
    assert server.refused == {"stale_round": 1, "unknown_sender": 1, "malformed": 4,
                              "out_of_order": 1, "duplicate": 1}  # fmt: skip
    keys = server.broadcast_keys()
    shares = {i: c.share_keys(keys[i]) for i, c in enumerate(clients)}
    with pytest.raises(SecAggRefused, match="malformed"):  # one neighbour left out
        server.receive(dataclasses.replace(shares[0], shares=shares[0].shares[1:]))
    with pytest.raises(SecAggRefused, match="out_of_order"):
        server.receive(adverts[0])
    for s in shares.values():
        server.receive(s)
    forwarded = server.forward_shares()
    with pytest.raises(SecAggRefused, match="malformed"):  # a vector of the wrong size
        server.receive(MaskedInput(0, 0, (), np.zeros(499, np.uint32)))
    ups = updates(8)
    for i, c in enumerate(clients):
        server.receive(c.masked_input(forwarded[i], ups[i]))
    requests = server.request_unmask()
    answers = {i: c.unmask(requests[i]) for i, c in enumerate(clients)}
    bad = answers[0].seed_shares[0]
    for pair, kind in [((bad[0], bad[1][:-1]), "malformed"), ((bad[0], b"\xff" * 66), "malformed"),
                       ((99, bad[1]), "malformed")]:  # fmt: skip
        with pytest.raises(SecAggRefused, match=kind):
            server.receive(dataclasses.replace(answers[0], seed_shares=(pair,)))
    with pytest.raises(SecAggRefused, match="duplicate"):
        server.receive(dataclasses.replace(answers[0], seed_shares=(bad, bad)))
    for answer in answers.values():
        server.receive(answer)
    assert_sum_of(server.unmask(), ups, set(range(8)))
    assert server.refused.total() == 8 + 2 + 1 + 4


def test_clients_refuse_out_of_order_and_misaddressed_messages() -> None:
    cfg = config()
    c = SecAggClient(cfg, 0, client_seed(SEED, 0, 0))
    with pytest.raises(SecAggRefused, match="out_of_order"):
        c.unmask(UnmaskRequest(0, 0, (0, 1, 2), ()))
    c.advertise()
    with pytest.raises(SecAggRefused, match="out_of_order"):
        c.advertise()
    other = SecAggServer(cfg)
    peers = [SecAggClient(cfg, i, client_seed(SEED, 0, i)) for i in range(8)]
    for p in peers:
        other.receive(p.advertise())
    keys = other.broadcast_keys()
    with pytest.raises(SecAggRefused, match="misrouted"):
        c.share_keys(keys[1])
    with pytest.raises(SecAggRefused, match="stale_round"):
        c.share_keys(dataclasses.replace(keys[0], round=3))
    with pytest.raises(SecAggRefused, match="duplicate"):
        c.share_keys(dataclasses.replace(keys[0], keys=keys[0].keys + keys[0].keys[:1]))
    with pytest.raises(SecAggRefused, match="malformed"):
        c.share_keys(ForwardedShares(0, 0, ()))  # type: ignore[arg-type]
    zero = dataclasses.replace(keys[0].keys[0], mask_public_key=bytes(32))
    with pytest.raises(SecAggRefused, match="malformed"):  # a key no exchange can use
        c.share_keys(dataclasses.replace(keys[0], keys=(zero, *keys[0].keys[1:])))
    c.share_keys(keys[0])  # the right one still works
    assert c.refused == {"out_of_order": 2, "misrouted": 1, "stale_round": 1, "duplicate": 1,
                         "malformed": 2}  # fmt: skip


def test_clients_refuse_to_unmask_when_the_server_claims_too_few_survivors() -> None:
    """A server that says all but t - 1 dropped would get their key shares and could
    unmask one client's input; clients refuse, so the round aborts instead."""
    cfg, ups = config(t=4), updates(8)

    def lie(m: Message) -> Message:
        if isinstance(m, UnmaskRequest):
            survivors = tuple(sorted({m.receiver, (m.receiver + 1) % 8}))
            dropped = tuple(i for i in range(8) if i not in survivors)
            return dataclasses.replace(m, survivors=survivors, dropped=dropped)
        return m

    server = SecAggServer(cfg)
    with pytest.raises(SecAggAbort, match="aborted at unmask: 0 clients answered"):
        simulate_round(cfg, ups, SEED, server=server, transit=lie)
    assert server.stage == "aborted"


def alter(kind: str) -> Callable[[Message], Message]:
    """A transit that flips one bit of client 0's first ``kind`` share in the unmask stage."""

    def transit(m: Message) -> Message:
        if isinstance(m, UnmaskShares) and m.sender == 0:
            pairs = getattr(m, kind)
            owner, share = pairs[0]
            changed = ((owner, (int.from_bytes(share, "big") ^ 1).to_bytes(66, "big")),)
            return dataclasses.replace(m, **{kind: changed + pairs[1:]})
        return m

    return transit


def test_an_altered_share_with_spare_shares_is_counted_and_the_sum_still_right() -> None:
    """More than t shares: the secret of the first t fails its check (the seed's commitment,
    the key's public key), is counted ``inconsistent``, and t shares without the altered
    one rebuild it."""
    cfg, ups = config(n=6, k=5, t=3), updates(6)
    drop = Dropouts(after_share_keys=frozenset({5}))
    for kind in ("seed_shares", "key_shares"):
        run = simulate_round(cfg, ups, SEED, drop, transit=alter(kind))
        assert run.server.refused == {"inconsistent": 1}, kind
        assert_sum_of(run.result, ups, {0, 1, 2, 3, 4})


def test_an_altered_share_with_exactly_t_shares_is_detected_and_aborts() -> None:
    """k = t = 3: each secret has exactly t shares, so no other set can be tried. Without the
    commitment an altered seed share would unmask a wrong sum unnoticed; with it the round
    aborts with a clear error and the mismatch is counted."""
    cfg, ups = config(n=6, k=3, t=3), updates(6)
    server = SecAggServer(cfg)
    with pytest.raises(SecAggAbort, match=r"seed shares of client \d: inconsistent with what"):
        simulate_round(cfg, ups, SEED, server=server, transit=alter("seed_shares"))
    assert server.refused == {"inconsistent": 1}
    assert_sum_of(simulate_round(cfg, ups, SEED).result, ups, set(range(6)))


def test_a_wrong_seed_commitment_is_refused_or_caught() -> None:
    """A commitment of the wrong size is refused when advertised; one of the right size
    that does not match the seed aborts the unmasking, counted."""
    cfg, ups = config(n=6, k=3, t=3), updates(6)

    def commitment(value: bytes) -> Callable[[Message], Message]:
        def transit(m: Message) -> Message:
            if isinstance(m, AdvertiseKeys) and m.sender == 2:
                return dataclasses.replace(m, seed_commitment=value)
            return m

        return transit

    server = SecAggServer(cfg)
    with pytest.raises(SecAggAbort, match="seed shares of client 2: inconsistent"):
        simulate_round(cfg, ups, SEED, server=server, transit=commitment(b"x" * 32))
    assert server.refused == {"inconsistent": 1}
    cfg, ups = config(n=8, k=5, t=3), updates(8)
    server = SecAggServer(cfg)
    run = simulate_round(cfg, ups, SEED, server=server, transit=commitment(b"x" * 31))
    assert server.refused["malformed"] == 1 and 2 not in run.result.survivors  # type: ignore


def test_no_pickle_in_the_protocol() -> None:
    from pathlib import Path

    import fedloom.privacy.secagg as secagg

    sources = Path(secagg.__file__).parent.glob("*.py")
    assert not [p.name for p in sources if re.search(r"import pickle|pickle\.load", p.read_text())]

