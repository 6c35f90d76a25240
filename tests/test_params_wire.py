"""The flat parameter buffer (ParamSpec, flatten_module) and the safetensors wire format."""

from __future__ import annotations

import ast
import json
import math
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn

import fedloom
from fedloom import ParamSpec, WireError, decode, encode, flatten_module
from fedloom.params import TensorSpec
from fedloom.wire import read_header

SRC = Path(fedloom.__file__).resolve().parent


def bn_model(dtype: torch.dtype = torch.float32) -> nn.Module:
    """Linear + BatchNorm (float running stats, integer num_batches_tracked) + Linear."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 3))
    model.train()
    model(torch.randn(16, 5))  # move the running statistics away from their init
    return model.to(dtype)


def model_and_flat(dtype: torch.dtype = torch.float32) -> tuple[nn.Module, ParamSpec, torch.Tensor]:
    model = bn_model(dtype)
    spec, flat = flatten_module(model)
    return model, spec, flat


# -- round trip ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_round_trip_is_bit_exact(dtype: torch.dtype) -> None:
    _, spec, flat = model_and_flat(dtype)
    assert spec.dtype == dtype
    # awkward but finite values: signed zero, tiny subnormal-ish numbers, the largest finite
    info = torch.finfo(dtype)
    flat[:4] = torch.tensor([-0.0, info.tiny / 4, info.max, -info.max], dtype=dtype)
    data = encode(flat, spec)
    got, meta = decode(data, spec)
    assert meta == {}
    assert got.dtype == dtype and got.shape == flat.shape
    bits = torch.int16 if flat.element_size() == 2 else torch.int32
    if flat.element_size() == 8:
        bits = torch.int64
    assert torch.equal(got.view(bits), flat.view(bits))


def test_spec_has_float_buffers_and_skips_integer_ones() -> None:
    model, spec, flat = model_and_flat()
    assert spec.names == [
        "0.weight",
        "0.bias",
        "1.weight",
        "1.bias",
        "1.running_mean",
        "1.running_var",
        "3.weight",
        "3.bias",
    ]
    assert "1.num_batches_tracked" in model.state_dict()
    assert "1.num_batches_tracked" not in spec.names
    assert spec.numel == flat.numel() == 5 * 4 + 4 + 4 * 4 + 4 * 3 + 3
    header, _, _ = read_header(encode(flat, spec))
    assert "1.num_batches_tracked" not in header
    # the running statistics travel: they are non-trivial after the forward pass above
    assert not torch.equal(flat[spec.slice("1.running_mean")], torch.zeros(4))
    assert torch.equal(
        decode(encode(flat, spec), spec)[0][spec.slice("1.running_var")],
        model[1].running_var,
    )


def test_decode_into_out_and_result_owns_its_memory() -> None:
    _, spec, flat = model_and_flat()
    data = bytearray(encode(flat, spec))
    out = torch.full_like(flat, 7.0)
    got, _ = decode(data, spec, out=out)
    assert got is out and torch.equal(out, flat)
    fresh, _ = decode(data, spec)
    data[-spec.nbytes :] = bytes(spec.nbytes)  # the sender's buffer is reused afterwards
    assert torch.equal(fresh, flat)
    fresh += 1  # and the result is writable
    assert torch.equal(fresh, flat + 1)


def test_decode_out_of_wrong_size_is_refused() -> None:
    _, spec, flat = model_and_flat()
    with pytest.raises(ValueError, match="out buffer"):
        decode(encode(flat, spec), spec, out=torch.zeros(3))


def test_metadata_round_trip() -> None:
    _, spec, flat = model_and_flat()
    meta = {"round": 3, "client": "c-7", "version": 2, "note": "ünïcode"}
    _, got = decode(encode(flat, spec, meta), spec)
    assert got == {"round": "3", "client": "c-7", "version": "2", "note": "ünïcode"}


def test_header_is_aligned_and_standard() -> None:
    _, spec, flat = model_and_flat()
    data = encode(flat, spec, {"a": "b"})
    (hlen,) = struct.unpack("<Q", data[:8])
    assert hlen % 8 == 0 and len(data) == 8 + hlen + spec.nbytes
    header = json.loads(data[8 : 8 + hlen])
    assert header["__metadata__"] == {"a": "b"}
    assert header["0.weight"] == {"dtype": "F32", "shape": [4, 5], "data_offsets": [0, 80]}


def test_encode_refuses_a_buffer_that_does_not_fit() -> None:
    _, spec, flat = model_and_flat()
    with pytest.raises(WireError, match="does not fit"):
        encode(flat[:-1], spec)
    with pytest.raises(WireError, match="does not fit"):
        encode(flat.double(), spec)


# -- interop with the safetensors library ------------------------------------------------
def test_safetensors_library_reads_our_bytes() -> None:
    _, spec, flat = model_and_flat()
    data = encode(flat, spec, {"round": 5})
    loaded = safetensors.torch.load(data)
    expected = spec.unflatten(flat)
    assert sorted(loaded) == sorted(expected)
    for name, tensor in expected.items():
        assert loaded[name].dtype == tensor.dtype
        assert torch.equal(loaded[name], tensor), name


def test_we_read_the_safetensors_library_bytes_in_its_order() -> None:
    _, spec, flat = model_and_flat()
    tensors = {k: v.clone() for k, v in spec.unflatten(flat).items()}
    data = safetensors.torch.save(tensors, metadata={"source": "safetensors"})
    header, _, _ = read_header(data)
    by_offset = sorted(header, key=lambda n: header[n]["data_offsets"][0])
    assert by_offset != spec.names  # the library lays tensors out differently (sorted)
    out = torch.zeros_like(flat)
    got, meta = decode(data, spec, out=out)
    assert torch.equal(got, flat)
    assert meta == {"source": "safetensors"}
    got2, _ = decode(data, spec)
    assert torch.equal(got2, flat)


# -- rejections ---------------------------------------------------------------------------
def split(data: bytes) -> tuple[dict, bytes]:
    (hlen,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + hlen]), data[8 + hlen :]


def join(header: dict | bytes, payload: bytes) -> bytes:
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + payload


def _unknown(data: bytes) -> bytes:
    h, p = split(data)
    end = len(p)
    h["evil"] = {"dtype": "F32", "shape": [1], "data_offsets": [end, end + 4]}
    return join(h, p + b"\0" * 4)


def _missing(data: bytes) -> bytes:
    h, p = split(data)
    entry = h.pop("3.bias")  # the last tensor in the data section
    start, _ = entry["data_offsets"]
    return join(h, p[:start])


def _shape(data: bytes) -> bytes:
    h, p = split(data)
    h["0.weight"]["shape"] = [5, 4]  # same size, wrong shape
    return join(h, p)


def _dtype(data: bytes) -> bytes:
    h, p = split(data)
    h["0.bias"]["dtype"] = "I32"
    return join(h, p)


def _dtype_half(data: bytes) -> bytes:
    h, p = split(data)
    h["0.bias"]["dtype"] = "F16"
    return join(h, p)


def _overlap(data: bytes) -> bytes:
    h, p = split(data)
    a, b = h["0.bias"]["data_offsets"]
    h["0.bias"]["data_offsets"] = [a - 4, b - 4]  # overlaps the end of 0.weight
    return join(h, p)


def _gap(data: bytes) -> bytes:
    h, p = split(data)
    for name in list(h)[list(h).index("0.bias") :]:
        a, b = h[name]["data_offsets"]
        h[name]["data_offsets"] = [a + 4, b + 4]  # 4 unused bytes after 0.weight
    return join(h, p + b"\0" * 4)


def _wrong_span(data: bytes) -> bytes:
    h, p = split(data)
    a, _ = h["0.bias"]["data_offsets"]
    h["0.bias"]["data_offsets"] = [a, a + 4]
    return join(h, p)


def _truncated(data: bytes) -> bytes:
    return data[:-4]


def _trailing(data: bytes) -> bytes:
    return data + b"\0" * 4


def _header_too_long(data: bytes) -> bytes:
    return struct.pack("<Q", len(data)) + data[8:]


def _tiny(data: bytes) -> bytes:
    return data[:5]


def _not_json(data: bytes) -> bytes:
    _, p = split(data)
    return join(b'{"0.weight": {"dtype": ', p)


def _not_utf8(data: bytes) -> bytes:
    _, p = split(data)
    return join(b'{"\xff": 1}', p)


def _not_object(data: bytes) -> bytes:
    _, p = split(data)
    return join(b"[1, 2, 3]", p)


def _bad_metadata(data: bytes) -> bytes:
    h, p = split(data)
    h["__metadata__"] = {"round": 3}
    return join(h, p)


REJECTIONS: list[tuple[str, Callable[[bytes], bytes], str]] = [
    ("unknown", _unknown, r"unknown tensors \['evil'\]"),
    ("missing", _missing, r"missing tensors \['3\.bias'\]"),
    ("shape", _shape, r"0\.weight: shape \[5, 4\], expected \[4, 5\]"),
    ("dtype", _dtype, r"0\.bias: dtype I32, expected F32"),
    ("dtype-half", _dtype_half, r"0\.bias: dtype F16, expected F32"),
    ("overlap", _overlap, r"0\.bias: data_offsets start at 76, expected 80"),
    ("gap", _gap, r"0\.bias: data_offsets start at 84, expected 80"),
    ("span", _wrong_span, r"0\.bias: data_offsets \[80, 84\] do not hold 16 bytes"),
    ("truncated", _truncated, r"truncated: data section has \d+ bytes"),
    ("trailing", _trailing, r"trailing bytes: data section has \d+ bytes"),
    ("header-length", _header_too_long, r"header length \d+ does not fit a message"),
    ("tiny", _tiny, r"truncated message: 5 bytes"),
    ("not-json", _not_json, r"header is not valid JSON"),
    ("not-utf8", _not_utf8, r"header is not valid JSON"),
    ("not-object", _not_object, r"header is not a JSON object"),
    ("metadata", _bad_metadata, r"__metadata__ must map strings to strings"),
]


@pytest.mark.parametrize(
    "forge, message", [r[1:] for r in REJECTIONS], ids=[r[0] for r in REJECTIONS]
)
def test_rejections_name_the_problem_and_leave_out_untouched(forge, message) -> None:
    _, spec, flat = model_and_flat()
    good = encode(flat, spec)
    decode(good, spec)  # the unforged message is fine
    bad = forge(good)
    with pytest.raises(WireError, match=message):
        decode(bad, spec)
    out = torch.full_like(flat, 3.5)
    with pytest.raises(WireError, match=message):
        decode(bad, spec, out=out)
    assert torch.equal(out, torch.full_like(flat, 3.5))


def _unhashable_dtype(data: bytes) -> bytes:
    h, p = split(data)
    h["0.bias"]["dtype"] = ["F32"]
    return join(h, p)


def _deeply_nested(data: bytes) -> bytes:
    _, p = split(data)
    return join(b"[" * 100_000 + b"]" * 100_000, p)


def _entry_not_object(data: bytes) -> bytes:
    h, p = split(data)
    h["0.bias"] = [0, 16]
    return join(h, p)


@pytest.mark.parametrize(
    "forge",
    [_unhashable_dtype, _deeply_nested, _entry_not_object],
    ids=["unhashable-dtype", "deeply-nested", "entry-not-object"],
)
def test_malformed_headers_raise_wire_error_not_other_exceptions(forge) -> None:
    """Bytes come from another party: whatever they hold, the decoder answers WireError."""
    _, spec, flat = model_and_flat()
    out = torch.full_like(flat, 3.5)
    with pytest.raises(WireError):
        decode(forge(encode(flat, spec)), spec, out=out)
    assert torch.equal(out, torch.full_like(flat, 3.5))


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_values_are_rejected_naming_the_tensor(value: float) -> None:
    _, spec, flat = model_and_flat()
    flat[spec.slice("1.running_var")][2] = value
    data = encode(flat, spec)
    out = torch.full_like(flat, 3.5)
    with pytest.raises(WireError, match="NaN or Inf") as err:
        decode(data, spec, out=out)
    assert "1.running_var" in str(err.value)
    assert "0.weight" not in str(err.value) and "3.bias" not in str(err.value)
    assert torch.equal(out, torch.full_like(flat, 3.5))
    got, _ = decode(data, spec, check_finite=False)  # explicitly allowed
    assert torch.equal(got.isnan(), flat.isnan()) and torch.equal(got.isinf(), flat.isinf())


def test_non_finite_values_in_two_tensors_are_both_named() -> None:
    _, spec, flat = model_and_flat()
    flat[spec.slice("0.bias")][0] = math.nan
    flat[spec.slice("3.weight")][1] = math.inf
    with pytest.raises(WireError) as err:
        decode(encode(flat, spec), spec)
    assert "0.bias" in str(err.value) and "3.weight" in str(err.value)


def test_large_finite_half_precision_values_are_accepted() -> None:
    # 90,000 fp16 values of 1.0 are all finite, but their fp16 sum overflows to inf.
    model = nn.Linear(300, 300).half()
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.fill_(0.5)
    spec, flat = flatten_module(model)
    got, _ = decode(encode(flat, spec), spec)
    assert torch.equal(got, flat)


# -- nothing is ever unpickled -------------------------------------------------------------
def _sources() -> list[Path]:
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 20 and SRC / "wire.py" in files
    return files


def test_source_never_imports_pickle() -> None:
    banned = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal"}
    offenders = []
    for path in _sources():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path}:{node.lineno}" for n in names if n.split(".")[0] in banned]
        if "pickle.load" in path.read_text():
            offenders.append(f"{path}: pickle.load")
    assert offenders == []


def test_every_torch_load_uses_weights_only() -> None:
    calls, unsafe = 0, []
    for path in _sources():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "load"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "torch"
            ):
                calls += 1
                kw = {k.arg: k.value for k in node.keywords}
                flag = kw.get("weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    unsafe.append(f"{path}:{node.lineno}")
        # a bare "from torch import load" would dodge the check above
        text = path.read_text()
        if "from torch import load" in text or "torch.serialization.load" in text:
            unsafe.append(f"{path}: indirect torch load")
    assert calls >= 1  # the checkpoint loader
    assert unsafe == []


# -- flatten_module -----------------------------------------------------------------------
def test_flatten_preserves_values_and_parameters_become_views() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2))
    x = torch.randn(3, 4)
    before = model(x).detach()
    params_before = {n: id(p) for n, p in model.named_parameters()}
    values = {n: p.detach().clone() for n, p in model.named_parameters()}
    spec, flat = flatten_module(model)
    assert {n: id(p) for n, p in model.named_parameters()} == params_before  # same Parameters
    assert torch.equal(model(x), before)
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), values[name])
        assert torch.equal(flat[spec.slice(name)].view(p.shape), p.detach())
        assert p.data_ptr() == flat.data_ptr() + spec.slice(name).start * flat.element_size()
    with torch.no_grad():
        flat.zero_()
    assert torch.equal(model(x), torch.zeros(3, 2))
    with torch.no_grad():
        flat[spec.slice("2.bias")] = torch.tensor([1.5, -2.0])
    assert torch.equal(model(x), torch.tensor([[1.5, -2.0]] * 3))


def test_training_writes_the_flat_buffer() -> None:
    torch.manual_seed(2)
    model = bn_model()
    spec, flat = flatten_module(model)
    snapshot = flat.clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = model(torch.randn(8, 5)).pow(2).mean()
    loss.backward()
    opt.step()
    for name in ("0.weight", "3.bias", "1.running_mean"):
        assert not torch.equal(flat[spec.slice(name)], snapshot[spec.slice(name)]), name
    assert model[1].num_batches_tracked.dtype == torch.int64  # integer buffer stays local


def test_flatten_exclude_keeps_personal_layers_out() -> None:
    model = nn.ModuleDict(
        {"body": nn.Linear(3, 3), "head": nn.Linear(3, 2), "head2": nn.Linear(2, 2)}
    )
    head_w = model["head"].weight.detach().clone()
    spec, flat = flatten_module(model, exclude=["head"])
    assert spec.names == ["body.weight", "body.bias", "head2.weight", "head2.bias"]
    assert flat.numel() == 9 + 3 + 4 + 2
    with torch.no_grad():
        flat.fill_(4.0)
    assert torch.equal(model["body"].weight.detach(), torch.full((3, 3), 4.0))
    assert torch.equal(model["head2"].bias.detach(), torch.full((2,), 4.0))
    assert torch.equal(model["head"].weight.detach(), head_w)  # not a view of flat
    spec2, _ = flatten_module(nn.ModuleDict({"head": nn.Linear(2, 2)}), exclude=["head."])
    assert spec2.names == []


def test_mixed_float_dtypes_raise() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2).double())
    with pytest.raises(ValueError, match="one dtype"):
        flatten_module(model)
    spec, _ = flatten_module(model, exclude=["1"])  # excluding the odd one out is fine
    assert spec.dtype == torch.float32


def test_paramspec_checks_and_json_round_trip() -> None:
    _, spec, flat = model_and_flat()
    assert ParamSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    tensors = spec.unflatten(flat)
    assert torch.equal(spec.flatten(tensors), flat)
    bad = dict(tensors)
    bad.pop("0.bias")
    bad["x"] = torch.zeros(1)
    bad["3.weight"] = torch.zeros(2, 2)
    with pytest.raises(WireError) as err:
        spec.check(bad)
    msg = str(err.value)
    assert "unknown tensors ['x']" in msg and "missing tensors ['0.bias']" in msg
    assert "3.weight: shape (2, 2), expected (3, 4)" in msg
    with pytest.raises(ValueError, match="duplicate"):
        ParamSpec([TensorSpec("a", (1,), torch.float32)] * 2)
