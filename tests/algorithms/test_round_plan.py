"""The round plan's typed fields and its wire JSON (what network clients and ``ctx.config`` get)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fedloom.algorithms import FedProx, RoundPlan


def test_wire_json_is_the_flat_config_clients_always_got():
    plan = RoundPlan(
        [1, 4],
        {"km_assignment": {"1": 0, "4": 1}},
        local_epochs=3,
        client_epochs={4: 1},
        client_algorithm="fedprox",
        client_options={"mu": 0.1},
    )
    wire = plan.to_wire()
    assert wire == {
        "km_assignment": {"1": 0, "4": 1},
        "local_epochs": 3,
        "client_epochs": {"4": 1},
        "algorithm": {"name": "fedprox", "mu": 0.1},
    }
    back = RoundPlan.from_wire(json.loads(json.dumps(wire)), [1, 4], {"t": torch.zeros(2)})
    assert back.to_wire() == wire and back.clients == [1, 4] and list(back.tensors) == ["t"]
    assert (back.epochs_for(4, 9), back.epochs_for(1, 9), RoundPlan([]).epochs_for(1, 9)) == (
        1,
        3,
        9,
    )
    assert RoundPlan([0]).to_wire() == {} and not RoundPlan([0]).for_clients
    assert plan.for_clients and RoundPlan([0], tensors={"c": torch.zeros(1)}).for_clients


def test_wire_keys_given_as_config_move_to_their_fields_and_may_not_be_set_later():
    plan = RoundPlan([0], {"local_epochs": 2, "algorithm": {"name": "fedprox", "mu": 1}, "x": 1})
    assert (plan.local_epochs, plan.client_algorithm, plan.client_options, plan.config) == (
        2,
        "fedprox",
        {"mu": 1},
        {"x": 1},
    )
    plan.config["client_epochs"] = {"0": 1}
    with pytest.raises(ValueError, match="typed fields"):
        plan.to_wire()


def test_a_strategy_names_its_client_part_in_typed_fields():
    plan = FedProx(mu=0.5).configure(1, [0, 1, 2], np.random.default_rng(0))
    assert (plan.client_algorithm, plan.client_options, plan.config) == ("fedprox", {"mu": 0.5}, {})
