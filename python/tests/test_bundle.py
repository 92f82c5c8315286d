"""vstore.bundle: bundles from state dicts, checked by the store's own
validator before they are written; the written bundle answers as the
reference does. A real torch.nn.Module where torch is installed."""

import json
import pathlib

import numpy as np
import pytest
from safetensors.numpy import load as load_safetensors

import vstore
from vstore import bundle

from test_three_tower import DATA, build as build_store, inputs, load


def test_a_bundle_from_a_state_dict_answers_as_the_reference(tmp_path):
    case = load("three_tower")
    w, key = build_store(tmp_path / "s", case)
    c = case["cases"][0]
    src = DATA / "three_tower" / c["bundle"]
    desc = json.loads((src / "model.json").read_text())
    state = load_safetensors((src / "weights.safetensors").read_bytes())
    # A PyTorch-style integer buffer is left out, not refused.
    state["bn.num_batches_tracked"] = np.array(7, dtype=np.int64)
    snap = vstore.open(str(tmp_path / "s")).snapshot()
    out = bundle.write(tmp_path / "b", desc, state, schema=snap)
    with w.begin() as tx:
        tx.add_model_dir(out)
    snap = vstore.open(str(tmp_path / "s")).snapshot()
    for q in c["queries"]:
        cands = None if q["candidates"] is None else np.array(q["candidates"], np.uint64)
        r = snap.query(key, np.array(q["user"], np.float32), cands, q["k"], three_tower=inputs(q))
        np.testing.assert_array_equal(r.ids, np.array(q["expected"]["ids"], np.uint64))


def test_a_wrong_bundle_is_refused_before_it_is_written(tmp_path):
    case = load("three_tower")
    build_store(tmp_path / "s", case)
    snap = vstore.open(str(tmp_path / "s")).snapshot()
    src = DATA / "three_tower" / case["cases"][0]["bundle"]
    desc = json.loads((src / "model.json").read_text())
    state = load_safetensors((src / "weights.safetensors").read_bytes())
    bad = json.loads(json.dumps(desc))
    bad["upper"]["layers"][0]["activaton"] = "relu"  # misspelt
    with pytest.raises(vstore.BundleError, match="activaton"):
        bundle.write(tmp_path / "b1", bad, state, schema=snap)
    assert not (tmp_path / "b1").exists()
    name = desc["upper"]["layers"][0]["weight"]
    short = dict(state)
    short[name] = short[name][:, :-1]
    with pytest.raises(vstore.BundleError, match=name.replace(".", r"\.")):
        bundle.build(desc, short, schema=snap)


def test_a_torch_module(tmp_path):
    torch = pytest.importorskip(
        "torch", reason="torch is not installed: pip install torch (CPU wheel) to run this test"
    )
    nn = torch.nn
    torch.manual_seed(0)
    dim = 4

    class ThreeTower(nn.Module):
        def __init__(self):
            super().__init__()
            self.cross = nn.Sequential(nn.Linear(3, 6), nn.ReLU())
            self.upper = nn.Sequential(nn.Linear(dim + dim + 6, 8), nn.ReLU())
            self.click = nn.Linear(8, 1)
            self.bn = nn.BatchNorm1d(3)  # buffers the bundle leaves out

        def forward(self, user, item, price, user_stats):
            x = self.cross(torch.cat([price[:, None], user_stats.expand(len(price), 2)], 1))
            u = user.expand(len(price), dim)
            h = self.upper(torch.cat([u, item, x], 1))
            return torch.sigmoid(self.click(h))[:, 0]

    m = ThreeTower().eval()
    desc = {
        "format": "vstore.three_tower.v1", "space": "prerank", "version": "v1",
        "user_dim": dim, "item_dim": dim,
        "cross": {
            "inputs": [
                {"kind": "item_numeric", "column": "price"},
                {"kind": "user_dense", "name": "user_stats", "dim": 2},
            ],
            "layers": [{"weight": "cross.0.weight", "bias": "cross.0.bias", "activation": "relu"}],
        },
        "upper": {"layers": [{"weight": "upper.0.weight", "bias": "upper.0.bias", "activation": "relu"}]},
        "heads": [{"name": "click", "weight": "click.weight", "bias": "click.bias", "activation": "sigmoid"}],
        "fusion": {"kind": "weighted_sum", "weights": {"click": 1.0}},
    }
    rng = np.random.default_rng(0)
    n = 50
    ids = np.arange(1, n + 1, dtype=np.uint64)
    items = rng.standard_normal((n, dim)).astype(np.float32)
    price = rng.uniform(0, 5, n).astype(np.float32)
    schema = vstore.Schema().numeric("price").embedding("prerank", "v1", dim, "f32")
    w = vstore.create(str(tmp_path / "s"), schema)
    with w.begin() as tx:
        tx.add_items(ids, embeddings={"prerank@v1": items}, profile={"price": price})
    snap = vstore.open(str(tmp_path / "s")).snapshot()
    json_bytes, weights = bundle.build(desc, m.state_dict(), schema=snap)
    with w.begin() as tx:
        tx.add_model(json_bytes, weights)
    snap = vstore.open(str(tmp_path / "s")).snapshot()
    user = rng.standard_normal(dim).astype(np.float32)
    stats = rng.standard_normal(2).astype(np.float32)
    r = snap.query("prerank@v1", user, ids, n, three_tower={"user_stats": stats})
    with torch.no_grad():
        want = m(torch.from_numpy(user), torch.from_numpy(items), torch.from_numpy(price), torch.from_numpy(stats)).numpy()
    order = np.argsort(-want, kind="stable")
    np.testing.assert_allclose(r.scores, want[order], rtol=1e-5)
    np.testing.assert_array_equal(r.ids, ids[order])
