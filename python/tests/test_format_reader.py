"""The on-disk format against its document: format/reader/vstore_format.py
is a reader written from format/FORMAT.md alone. It reads every snapshot
of every golden store (one per format version), verifying every checksum
and every rule FORMAT.md states, and the newest snapshot's items must be
the ones the package reads, bit for bit. A damaged byte must be refused."""

import os
import shutil
import sys

import numpy as np
import pytest

import vstore

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
sys.path.insert(0, os.path.join(ROOT, "format", "reader"))
import vstore_format as fmt  # noqa: E402

GOLDEN = sorted(
    os.path.join(ROOT, "format", "golden", d)
    for d in os.listdir(os.path.join(ROOT, "format", "golden"))
    if d.startswith("v")
)


def test_there_is_a_golden_store_per_format_version():
    assert [os.path.basename(g) for g in GOLDEN] == [f"v{v}" for v in range(1, vstore.FORMAT_VERSION + 1)]


def rule_notes(x, found=None):
    """Every rule violation the reader recorded rather than raised (its
    `notes` and `conv_notes` lists, anywhere in a snapshot)."""
    found = [] if found is None else found
    if isinstance(x, dict):
        for k, v in x.items():
            if k in ("notes", "conv_notes") and isinstance(v, list):
                found.extend(v)
            else:
                rule_notes(v, found)
    elif isinstance(x, (list, tuple)):
        for v in x:
            rule_notes(v, found)
    return found


@pytest.mark.parametrize("store", GOLDEN, ids=os.path.basename)
def test_the_independent_reader_reads_what_the_package_reads(store):
    snaps = [fmt.read_snapshot(store, n, name) for n, name in fmt.list_manifests(store)]
    assert snaps, store
    for s in snaps:
        assert rule_notes(s) == [], (store, rule_notes(s))
    newest = snaps[-1]
    snap = vstore.open(store, prefault="off").snapshot()
    live = sorted(newest["live"])
    assert live == sorted(snap.ids().tolist())
    for idv in live:
        mine = fmt.item(newest, idv)
        theirs = snap.item(idv)
        for (group, name), (value, missing) in mine["columns"].items():
            got = theirs["profile" if group == "profile" else "stats"][name]
            if missing:
                assert got is None, (store, idv, name)
            else:
                assert np.float32(got) == np.float32(value), (store, idv, name, got, value)
        assert sorted(mine["embeddings"]) == sorted(theirs["embeddings"]), (store, idv)
        for key, (vec, computed) in mine["embeddings"].items():
            assert np.array_equal(np.asarray(vec, np.float32), theirs["embeddings"][key]), (store, idv, key)
            assert bool(computed) == theirs["computed"][key], (store, idv, key)


def test_the_independent_reader_refuses_a_damaged_byte(tmp_path):
    src = GOLDEN[-1]
    dst = tmp_path / "s"
    shutil.copytree(src, dst)
    # (Read from the golden store: the reader caches the files it checked.)
    num, name = fmt.list_manifests(src)[-1]
    snap = fmt.read_snapshot(src, num, name)
    victim = next(f for f in sorted(snap["file_versions"]) if f.endswith(".vcol"))
    data = bytearray((dst / victim).read_bytes())
    data[100] ^= 0x20  # inside the data region, under a chunk checksum
    (dst / victim).write_bytes(bytes(data))
    with pytest.raises(fmt.FormatError):
        fmt.read_snapshot(str(dst), num, name)
