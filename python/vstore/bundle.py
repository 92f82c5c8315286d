"""Model bundles from PyTorch (or numpy) weights, so that nobody writes
`model.json` and `weights.safetensors` by hand.

A bundle is the description of the model (the `model.json` object of
docs/BUNDLE.md, v1 or v2) whose tensor fields name tensors, and those
tensors. With a module trained in PyTorch, the names are the keys of its
`state_dict()`::

    from vstore import bundle

    desc = {
        "format": "vstore.three_tower.v1", "space": "prerank", "version": "v42",
        "user_dim": 64, "item_dim": 64,
        "cross": {"inputs": [...], "layers": [
            {"weight": "cross.0.weight", "bias": "cross.0.bias", "activation": "relu"}]},
        ...
    }
    json_bytes, weights = bundle.build(desc, model.state_dict(), schema=snap)
    bundle.write("bundle_dir", desc, model.state_dict(), schema=snap)
    with writer.begin() as tx:
        tx.add_model(json_bytes, weights)

`build` checks the bundle with the store's own validator (the one
`Transaction.add_model` runs) against `schema` (a `vstore.Schema`, or a
`Snapshot` whose schema to use) before anything is written, so a wrong
shape or a misspelt field is a `BundleError` naming it here, not at the
store. Only floating-point tensors are taken (as float32; PyTorch's integer
buffers such as `num_batches_tracked` are left out); tensors the
description does not name are ignored by the store.
"""

import json as _json
import os
from typing import Any, Mapping, Tuple, Union

import numpy as np

from ._vstore import Schema, Snapshot, check_bundle

__all__ = ["build", "write", "tensors"]


def _array(value: Any) -> Union[np.ndarray, None]:
    """A tensor or array as a contiguous float32 numpy array; None for one
    that is not floating-point."""
    if hasattr(value, "detach"):  # a torch.Tensor
        if not value.is_floating_point():
            return None
        value = value.detach().to("cpu").float().numpy()
    a = np.asarray(value)
    if a.dtype.kind != "f":
        return None
    return np.ascontiguousarray(a, dtype=np.float32)


def tensors(state_dict: Mapping[str, Any]) -> dict:
    """The floating-point tensors of `state_dict` as float32 numpy arrays."""
    out = {}
    for name, value in state_dict.items():
        a = _array(value)
        if a is not None:
            out[str(name)] = a
    return out


def _safetensors(arrays: Mapping[str, np.ndarray]) -> bytes:
    from safetensors.numpy import save

    return save(dict(arrays))


def build(
    description: Union[Mapping[str, Any], str],
    state_dict: Mapping[str, Any],
    schema: Union[Schema, Snapshot],
) -> Tuple[bytes, bytes]:
    """The bundle's `model.json` and `weights.safetensors` bytes, checked
    by the store's validator against `schema`; raises `BundleError` (the
    field at fault) otherwise."""
    text = description if isinstance(description, str) else _json.dumps(description)
    json_bytes = text.encode("utf-8")
    weights = _safetensors(tensors(state_dict))
    check_bundle(json_bytes, weights, schema)
    return json_bytes, weights


def write(
    directory: Union[str, "os.PathLike[str]"],
    description: Union[Mapping[str, Any], str],
    state_dict: Mapping[str, Any],
    schema: Union[Schema, Snapshot],
) -> str:
    """Checks the bundle (`build`) and writes it to `directory` as
    `model.json` and `weights.safetensors` (the layout of
    `Transaction.add_model_dir` and `vstore-tool add-model`); returns the
    directory."""
    json_bytes, weights = build(description, state_dict, schema)
    os.makedirs(directory, exist_ok=True)
    for name, data in (("model.json", json_bytes), ("weights.safetensors", weights)):
        tmp = os.path.join(directory, name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, os.path.join(directory, name))
    return str(directory)
