"""The same FedAvg run from Python, in a few lines, two ways.

python examples/python_api.py
"""

import fedloom
from fedloom.data import Dirichlet

# 1. From a config (a file path, a dict, or fedloom.Config), exactly what `fedloom run` does.
result = fedloom.run(
    {"name": "api_demo", "rounds": 5, "data": {"num_clients": 50}, "model": {"name": "mlp"}},
    overrides=["train.lr=0.05"],
    overwrite=True,  # replace runs/api_demo from an earlier run of this script
)
print("config run:", result.final_metrics)

# 2. From the parts: a dataset, a partitioner, a model, a strategy, the loop.
data = fedloom.load_mnist5k()
task = fedloom.ClassificationTask(
    lambda: fedloom.build_model("mlp", data.input_shape, data.num_classes),
    data,
    Dirichlet(num_clients=50, alpha=0.5),
    lr=0.05,
    local_epochs=2,
)
fed = fedloom.Federation(task, fedloom.FedAvg(clients_per_round=10), rounds=5, seed=0)
print("parts run:", fed.run().final_metrics)
