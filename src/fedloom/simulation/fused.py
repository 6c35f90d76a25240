"""A hand-derived batched SGD step for chains of ``Linear`` layers and activations.

Why: for a multilayer perceptron (the FedAvg paper's 2NN, logistic regression) the generic
``vmap(grad(...))`` step of :mod:`~fedloom.simulation.vectorized` streams every client's
weights through memory four times per step (forward, input gradient, weight gradient into a
fresh buffer, the SGD update reading both) and pays ``vmap``'s dispatch on each of a dozen
ops. Written out by hand, a step reads each weight matrix once for the forward, once for the
input gradient, and updates it in place with one ``baddbmm_`` that adds ``-lr * d^T h``
straight into the weights: no gradient buffer is ever allocated. Better still, for the first
steps of a round a layer keeps its clients' updates as low-rank factors and runs the forward
on the shared global weights (:class:`_Weights`), writing each client's weights once. The
activations' backward are aten's own ``*_backward`` kernels; in float64 results equal the
sequential engine's to rounding, and two trial steps are checked against autograd's SGD
before the chain is used.

What qualifies: a model that ``torch.fx`` traces into one chain ``x -> op -> op -> ... ->
logits`` of ``nn.Linear`` (each used once), ``ReLU``/``Tanh``/``Sigmoid``/``LeakyReLU``
(as modules, ``torch``/``F`` functions or tensor methods), ``Identity``, a zero-probability
``Dropout`` and a leading ``Flatten``, with no forward hooks. Anything else is left to the
``vmap`` step, and :meth:`LinearChain.of` says why (logged).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

#: activation -> its backward, in terms of the activation's *output* (all of aten's own
#: kernels accept the result: ReLU's mask is result > 0, tanh' = 1 - y^2, sigmoid' = y(1-y))
_ACTIVATIONS = {"relu", "tanh", "sigmoid", "leaky_relu"}
_ACTIVATE: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "relu": lambda h, _: h.relu_(),
    "tanh": lambda h, _: h.tanh_(),
    "sigmoid": lambda h, _: h.sigmoid_(),
    "leaky_relu": lambda h, slope: F.leaky_relu_(h, slope),
}
_MODULES: dict[type[nn.Module], str] = {
    nn.ReLU: "relu",
    nn.Tanh: "tanh",
    nn.Sigmoid: "sigmoid",
    nn.LeakyReLU: "leaky_relu",
}
_FUNCTIONS = {
    F.relu: "relu",
    torch.relu: "relu",
    torch.tanh: "tanh",
    torch.sigmoid: "sigmoid",
    F.sigmoid: "sigmoid",
    F.tanh: "tanh",
    F.leaky_relu: "leaky_relu",
}


@dataclass(frozen=True)
class Op:
    """One link of the chain: a linear layer (entry indices into the spec) or an activation."""

    kind: str  # "linear" or an activation name
    weight: int = -1  # spec entry of the weight (linear only)
    bias: int | None = None  # spec entry of the bias, None without one
    slope: float = 0.01  # LeakyReLU's negative slope


class LinearChain:
    """The batched forward, backward and in-place SGD update of one step, for all clients.

    Build it with :meth:`of`, which returns ``None`` (and the reason) for other models.

    Args:
        ops: the chain, input to logits.
        hyper: per spec entry, ``(lr, weight decay)``; entries absent are not updated
            (frozen parameters still pass gradients through).
    """

    def __init__(self, ops: Sequence[Op], hyper: dict[int, tuple[float, float]]):
        self.ops = list(ops)
        self.hyper = dict(hyper)
        self.lowrank = True  # record steps as low-rank updates where cheaper (see _Weights)
        self._first_linear = next(i for i, op in enumerate(self.ops) if op.kind == "linear")

    @classmethod
    def of(
        cls,
        model: nn.Module,
        names: Sequence[str],
        hyper: dict[int, tuple[float, float]],
        sample_dims: int = 1,
    ) -> tuple[LinearChain | None, str]:
        """Analyse ``model``; ``names`` are the spec's entry names (their order is the index).

        ``sample_dims`` is the number of dims of one input sample: above 1 the chain must
        start with a flatten (a Linear over the last dim alone is not what the step computes).
        """
        hooked = _hooked_module(model)
        if hooked is not None:
            return None, f"{hooked} has forward hooks (the fused step would not run them)"
        try:
            graph = torch.fx.symbolic_trace(model).graph
        except Exception as e:  # noqa: BLE001 - fx refuses many things; any refusal is a "no"
            return None, f"torch.fx cannot trace it ({type(e).__name__})"
        index = {n: i for i, n in enumerate(names)}
        modules = dict(model.named_modules())
        ops: list[Op] = []
        seen: set[str] = set()
        flattened = False
        prev: torch.fx.Node | None = None
        for node in graph.nodes:
            if node.op == "placeholder":
                if prev is not None:
                    return None, "the model takes more than one input"
                prev = node
                continue
            if node.op == "output":
                if node.args[0] is not prev:
                    return None, "the output is not the end of the chain"
                break
            if len(node.all_input_nodes) != 1 or node.all_input_nodes[0] is not prev:
                return None, f"{node.name} does not take the previous op's output alone"
            if len(prev.users) != 1:
                return None, f"{prev.name} is used more than once"
            op = _op_of(node, modules, index, first=not ops and not flattened, seen=seen)
            if isinstance(op, str):
                return None, op
            if op is not None:
                ops.append(op)
            elif not ops and _is_flatten(node, modules):
                flattened = True
            prev = node
        if sample_dims > 1 and not flattened:
            return None, f"a Linear over {sample_dims}-dimensional samples without a flatten"
        if not any(op.kind == "linear" for op in ops):
            return None, "the model has no Linear layer"
        if ops[-1].kind != "linear":
            return None, "the logits do not come out of a Linear layer"
        return cls(ops, hyper), ""

    def train(
        self,
        work: Sequence[torch.Tensor],
        glob: Sequence[torch.Tensor],
        active: Sequence[int],
        batch: Callable[[int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
        k: int,
    ) -> torch.Tensor:
        """Train ``k`` clients from the global model; return their summed losses.

        Args:
            work: per spec entry, a contiguous ``(k, *shape)`` buffer; on return the entries of
                :attr:`owned` hold each client's trained tensor (the others are not touched).
            glob: per spec entry, the global tensor every client starts from.
            active: per step, how many clients still train: the rows are sorted by step
                count, so they are always a prefix.
            batch: ``(step, a) -> (x, y, w)``: the ``(a, B, ...)`` inputs, ``(a, B)`` labels
                and ``(a, B)`` sample weights (``1/len(batch)``, 0 for padding slots).
            k: the clients; those past ``active[0]`` take no step and keep the global model.
        """
        layers = {
            i: _Weights(
                glob[op.weight], work[op.weight][:k], self.hyper.get(op.weight), self.lowrank
            )
            for i, op in enumerate(self.ops)
            if op.kind == "linear"
        }
        for op in self.ops:
            if op.kind == "linear" and op.bias is not None:
                work[op.bias][:k].copy_(glob[op.bias].expand(k, -1))
        losses = torch.zeros(k, dtype=glob[0].dtype, device=glob[0].device)
        for t, a in enumerate(active):
            x, y, w = batch(t, a)
            losses[:a] += self._step(layers, work, a, x, y, w)
        for layer in layers.values():
            layer.finish()
        return losses

    @property
    def owned(self) -> set[int]:
        """Spec entries that :meth:`train` writes into ``work``: the Linear layers' tensors."""
        return {
            e
            for op in self.ops
            if op.kind == "linear"
            for e in (op.weight, op.bias)
            if e is not None
        }

    def _step(
        self,
        layers: dict[int, _Weights],
        work: Sequence[torch.Tensor],
        a: int,
        x: torch.Tensor,
        y: torch.Tensor,
        w: torch.Tensor,
    ) -> torch.Tensor:
        """One SGD step of the first ``a`` clients on one batch each; their weighted losses."""
        b = y.shape[1]
        h = x.reshape(a, b, -1)
        outs = [h]  # outs[i] is the input of op i
        outs_linear = [False]  # whether outs[i] came out of a Linear
        for i, op in enumerate(self.ops):
            if op.kind == "linear":
                h = layers[i].forward(h)
                if op.bias is not None:
                    h.add_(work[op.bias][:a].unsqueeze(1))
            elif outs_linear[-1]:  # in place: a Linear's output is needed by no backward
                h = _ACTIVATE[op.kind](h, op.slope)
            else:  # the input, or an activation's output (needed by its own backward)
                h = _ACTIVATE[op.kind](h.clone(), op.slope)
            outs_linear.append(op.kind == "linear")
            outs.append(h)

        # mean cross-entropy over the real samples: d logits = w * (softmax - onehot)
        logp = torch.log_softmax(h, -1)
        target = y.unsqueeze(-1)
        losses = -(logp.gather(-1, target).squeeze(-1) * w).sum(-1)
        ww = w.unsqueeze(-1)
        d = logp.exp_().mul_(ww)
        d.scatter_add_(-1, target, -ww)

        for i in range(len(self.ops) - 1, -1, -1):
            op = self.ops[i]
            if op.kind == "linear":
                layer = layers[i]
                d_in = layer.backward(d) if i > self._first_linear else None
                layer.update(d, outs[i])
                if op.bias is not None and op.bias in self.hyper:
                    lr, wd = self.hyper[op.bias]
                    bias = work[op.bias][:a]
                    if wd:
                        bias.mul_(1.0 - lr * wd)
                    bias.add_(d.sum(1), alpha=-lr)
                if d_in is None:
                    break
                d = d_in
            elif op.kind == "relu":
                d = torch.ops.aten.threshold_backward(d, outs[i + 1], 0)
            elif op.kind == "tanh":
                d = torch.ops.aten.tanh_backward(d, outs[i + 1])
            elif op.kind == "sigmoid":
                d = torch.ops.aten.sigmoid_backward(d, outs[i + 1])
            else:  # leaky_relu with a positive slope: the output's sign is the input's
                d = torch.ops.aten.leaky_relu_backward(d, outs[i + 1], op.slope, True)
        return losses


class _Weights:
    """One Linear layer's weight while a chunk trains: shared, low-rank or dense.

    * **shared**: a frozen weight, the same global ``W0`` for every client.
    * **low-rank**: each SGD step adds ``-lr * d^T h``, of rank ``B`` (the batch), so after
      ``t`` steps a client holds ``W0 - lr * D^T H`` with ``D``, ``H`` its stacked ``d``s and
      ``h``s. The forward is then one matmul of every client's batch with the shared ``W0``
      (in cache) plus a correction of rank ``tB`` (``(h H^T) D``), and the weights are written
      once, when the chunk ends, instead of read and written at every step. Worth it while
      ``tB`` is well below the layer's smaller dimension: past ``min(in, out) / 2`` the layer
      is flushed to dense (and a weight-decayed layer is dense from the start).
    * **dense**: a ``(k, out, in)`` buffer per client, read by a batched matmul and updated
      in place with one ``baddbmm_`` (no gradient buffer).
    """

    def __init__(
        self,
        w0: torch.Tensor,
        work: torch.Tensor,
        hyper: tuple[float, float] | None,
        lowrank: bool,
    ):
        self.w0, self.work = w0, work
        self.lr, self.wd = hyper if hyper is not None else (0.0, 0.0)
        self.mode = "shared" if hyper is None else "lowrank" if lowrank and not self.wd else "dense"
        self.fresh = True  # no update yet: every client holds W0
        self.steps = 0  # low-rank blocks recorded
        self.cap = min(w0.shape) // 2  # the rank past which dense is cheaper
        self.H: torch.Tensor | None = None  # (k, cap, in): the recorded inputs h
        self.D: torch.Tensor | None = None  # (k, cap, out): the recorded output gradients d

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``h W^T`` per client (``h``: ``(a, B, in)``)."""
        a = h.shape[0]
        if self.mode == "dense" and not self.fresh:
            return torch.bmm(h, self.work[:a].transpose(1, 2))
        z = torch.matmul(h, self.w0.t())  # all clients' rows in one matmul with W0
        if self.steps:
            assert self.H is not None and self.D is not None
            r = self.steps * h.shape[1]
            z.baddbmm_(torch.bmm(h, self.H[:a, :r].transpose(1, 2)), self.D[:a, :r], alpha=-self.lr)
        return z

    def backward(self, d: torch.Tensor) -> torch.Tensor:
        """``d W`` per client, with the weights before this step's update."""
        a = d.shape[0]
        if self.mode == "dense" and not self.fresh:
            return torch.bmm(d, self.work[:a])
        g = torch.matmul(d, self.w0)
        if self.steps:
            assert self.H is not None and self.D is not None
            r = self.steps * d.shape[1]
            g.baddbmm_(torch.bmm(d, self.D[:a, :r].transpose(1, 2)), self.H[:a, :r], alpha=-self.lr)
        return g

    def update(self, d: torch.Tensor, h: torch.Tensor) -> None:
        """SGD on the first ``a`` clients: ``W <- (1 - lr wd) W - lr d^T h``."""
        if self.mode == "shared":
            return
        a, b = d.shape[:2]
        if self.mode == "lowrank" and (self.steps + 1) * b > self.cap:
            self._flush()
        if self.mode == "dense":
            dt, beta = d.transpose(1, 2), 1.0 - self.lr * self.wd
            if self.fresh:  # from W0 straight into the buffer, no copy first
                w0 = self.w0.expand(a, -1, -1)
                torch.baddbmm(w0, dt, h, beta=beta, alpha=-self.lr, out=self.work[:a])
                self.work[a:].copy_(self.w0.expand_as(self.work[a:]))
                self.fresh = False
            else:
                self.work[:a].baddbmm_(dt, h, beta=beta, alpha=-self.lr)
            return
        k = self.work.shape[0]
        if self.H is None:
            self.block, r = b, self.cap // b * b
            self.H = torch.empty((k, r, h.shape[2]), dtype=h.dtype, device=h.device)
            self.D = torch.empty((k, r, d.shape[2]), dtype=d.dtype, device=d.device)
        assert self.D is not None
        cols = slice(self.steps * b, (self.steps + 1) * b)
        self.H[:a, cols] = h
        self.D[:a, cols] = d
        self.H[a:, cols] = 0  # clients that have finished take no more steps (and 0 * the
        self.D[a:, cols] = 0  # uninitialised memory of H could be 0 * NaN in the flush)
        self.steps += 1

    def finish(self) -> None:
        """Leave every client's weight in ``work``."""
        if self.mode != "dense" or self.fresh:
            self._flush()

    def _flush(self) -> None:
        """``work = W0 - lr D^T H``: the low-rank steps so far, written out once."""
        w0 = self.w0.expand_as(self.work)
        if self.steps:
            assert self.H is not None and self.D is not None
            r = self.steps * self.block
            dt, hh = self.D[:, :r].transpose(1, 2), self.H[:, :r]
            torch.baddbmm(w0, dt, hh, alpha=-self.lr, out=self.work)
        else:
            self.work.copy_(w0)
        self.mode, self.fresh, self.steps = "dense", False, 0


def _hooked_module(model: nn.Module) -> str | None:
    """The name of a module with forward (pre-)hooks, ``"a global module hook"``, or None."""
    from torch.nn.modules import module as torch_module

    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return "a global module hook"
    for name, m in model.named_modules():
        if m._forward_hooks or m._forward_pre_hooks:
            return f"module {name or 'root'}"
    return None


def _op_of(
    node: torch.fx.Node,
    modules: dict[str, nn.Module],
    index: dict[str, int],
    first: bool,
    seen: set[str],
) -> Op | str | None:
    """The :class:`Op` of one traced node; ``None`` for a no-op; a string says why not."""
    if node.op == "call_module":
        module = modules[str(node.target)]
        if isinstance(module, nn.Linear):
            if node.target in seen:
                return f"Linear {node.target} is used twice (shared weights)"
            seen.add(str(node.target))
            weight = index.get(f"{node.target}.weight")
            if weight is None:
                return f"{node.target}.weight is not a federated parameter"
            bias = None
            if module.bias is not None:
                bias = index.get(f"{node.target}.bias")
                if bias is None:
                    return f"{node.target}.bias is not a federated parameter"
            return Op("linear", weight, bias)
        if isinstance(module, nn.Flatten):
            return _flatten(first, module.start_dim, module.end_dim)
        if isinstance(module, nn.Identity) or (isinstance(module, nn.Dropout) and module.p == 0):
            return None
        kind = _MODULES.get(type(module))
        if kind is None:
            return f"{type(module).__name__} ({node.target}) is not a Linear or an activation"
        return _activation(kind, float(getattr(module, "negative_slope", 0.01)))
    if node.op == "call_function" and node.target in _FUNCTIONS:
        kind = _FUNCTIONS[node.target]
        given = node.args[1] if len(node.args) > 1 else node.kwargs.get("negative_slope", 0.01)
        return _activation(kind, given)
    if node.op == "call_function" and node.target is torch.flatten:
        return _flatten(first, *_dims(node))
    if node.op == "call_method" and node.target in _ACTIVATIONS:
        given = node.args[1] if len(node.args) > 1 else node.kwargs.get("negative_slope", 0.01)
        return _activation(str(node.target), given)
    if node.op == "call_method" and node.target == "flatten":
        return _flatten(first, *_dims(node))
    return f"{node.op} {node.target} is not a Linear or an activation"


def _activation(kind: str, slope: object) -> Op | str:
    if not isinstance(slope, (int, float)) or (kind == "leaky_relu" and slope <= 0):
        return f"{kind} with slope {slope!r} (only a constant positive slope is fused)"
    return Op(kind, slope=float(slope))


def _dims(node: torch.fx.Node) -> tuple[object, object]:
    start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
    end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
    return start, end


def _is_flatten(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[str(node.target)], nn.Flatten)
    return node.target is torch.flatten or (node.op == "call_method" and node.target == "flatten")


def _flatten(first: bool, start: object, end: object) -> str | None:
    """A flatten of every dim but the batch's, before the first op (the step flattens anyway)."""
    if not first or start != 1 or end != -1:
        return f"flatten({start}, {end}) other than a leading flatten(1, -1)"
    return None
