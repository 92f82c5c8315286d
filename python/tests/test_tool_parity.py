"""A store built by `vstore-tool build` and one built from Python out of the
same files (`vstore-tool demo --export`: .npy, Parquet, CSV, a bundle)
answer every query the same, bit for bit. Needs the tool binary: CI's
`cargo test --workspace` leaves it in target/debug; elsewhere
`cargo build -p vstore-tool` (or set VSTORE_TOOL)."""

import json
import os
import pathlib
import subprocess

import numpy as np
import pandas as pd
import pytest

import vstore

ROOT = pathlib.Path(__file__).resolve().parents[2]


def tool():
    env = os.environ.get("VSTORE_TOOL")
    if env:
        return env
    for build in ("release", "debug"):
        p = ROOT / "target" / build / "vstore-tool"
        if p.exists():
            return str(p)
    pytest.skip("no vstore-tool binary: run `cargo build -p vstore-tool` (or set VSTORE_TOOL)")


def run(*args):
    subprocess.run([tool(), *map(str, args)], check=True, capture_output=True)


def test_a_python_build_answers_as_the_tool_build(tmp_path):
    exp = tmp_path / "exp"
    run("demo", "--export", exp, "--rows", 3000)
    run(
        "build", tmp_path / "a", "--ids", exp / "ids.npy",
        "--embedding", f"prerank@v1:f16={exp / 'emb_v1.npy'}",
        "--profile", exp / "items.parquet", "--stats", exp / "stats.csv",
        "--model", exp / "model", "--quiet",
    )
    a = vstore.open(str(tmp_path / "a")).snapshot()
    # The same schema (kinds and defaults) as the tool inferred.
    info = a.inspect()
    schema = vstore.Schema()
    for name, c in info["columns"].items():
        if c["kind"] == "categorical":
            schema = schema.categorical(name, c["default"])
        elif c["kind"] == "numeric":
            schema = schema.numeric(name, c["default"])
        else:
            schema = schema.stat(name, c["default"])
    for key, e in info["embeddings"].items():
        space, version = key.split("@")
        schema = schema.embedding(space, version, e["dim"], e["dtype"])
    ids = np.load(exp / "ids.npy")
    emb = np.load(exp / "emb_v1.npy")
    # Rows of the tables by id, in the order of ids.npy (absent: missing).
    profile = pd.read_parquet(exp / "items.parquet").set_index("id").reindex(ids.astype(np.int64))
    stats = pd.read_csv(exp / "stats.csv").set_index("id").reindex(ids.astype(np.int64))
    w = vstore.create(str(tmp_path / "b"), schema)
    with w.begin() as tx:
        tx.add_items(ids, embeddings={"prerank@v1": emb}, profile=profile, stats=stats)
        tx.add_model_dir(exp / "model")
    b = vstore.open(str(tmp_path / "b")).snapshot()
    assert len(a) == len(b) == len(ids)
    user = np.array(json.loads((exp / "user.json").read_text()), np.float32)
    ui = json.loads((exp / "user_inputs.json").read_text())
    inputs = {k: np.array(v, np.float32) for k, v in ui.get("dense", {}).items()}
    for k, m in ui.get("by_item", {}).items():
        inputs[k] = {int(c): np.array(v, np.float32) for c, v in m.items()}
    cands = np.array([int(x) for x in (exp / "candidates.txt").read_text().split()], np.uint64)
    for kw in ({}, {"three_tower": inputs, "heads": True}):
        ra = a.query("prerank@v1", user, cands, 200, **kw)
        rb = b.query("prerank@v1", user, cands, 200, **kw)
        np.testing.assert_array_equal(ra.ids, rb.ids)
        np.testing.assert_array_equal(ra.scores, rb.scores)
        np.testing.assert_array_equal(ra.not_found, rb.not_found)
        if kw:
            np.testing.assert_array_equal(ra.heads, rb.heads)
