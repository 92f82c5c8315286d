"""Helpers shared by the three-tower reference generators (gen.py, gen_v2.py).

Value rounding (float32 / float16 / bfloat16 exact values), the activations,
the robustness checks (score gaps, rank-fusion near-tie clusters), candidate
list drawing, and the writers (hand-written safetensors, compact JSON).
Moving these here from gen.py did not change gen.py's output (regenerate and
`git diff --stat tests/data/three_tower` shows nothing).
"""

import json
import struct

import numpy as np


def f32(x):
    """Round to float32 and back to float64 (so the value is f32-exact)."""
    return np.asarray(x, dtype=np.float64).astype(np.float32).astype(np.float64)


def f32s(x):
    return float(np.float32(x))


def f16(x):
    """Round to float16 and back to float64 (f16-exact, hence f32-exact)."""
    return np.asarray(x, dtype=np.float64).astype(np.float16).astype(np.float64)


def bf16_bits(x):
    """bfloat16 bit patterns (uint16) of x rounded to nearest, ties to even."""
    b = np.asarray(x, dtype=np.float64).astype(np.float32).view(np.uint32).astype(np.uint64)
    b = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
    return b.astype(np.uint16)


def bf16(x):
    """Round to bfloat16 and back to float64 (bf16-exact, hence f32-exact)."""
    bits = bf16_bits(x).astype(np.uint32) << 16
    return bits.view(np.float32).astype(np.float64)


def act(x, kind, dt):
    if kind == "relu":
        return np.maximum(x, dt(0))
    if kind == "sigmoid":
        return dt(1) / (dt(1) + np.exp(-x))
    if kind == "identity":
        return x
    if kind == "exp":
        return np.exp(x)
    raise ValueError(kind)


def relgap(a, b):
    return abs(a - b) / max(abs(a), abs(b))


def scores_separated(score, order, k):
    """Consecutive fused scores through the k boundary differ by > 1e-4 relative."""
    span = order[:min(k + 1, len(order))]
    return all(relgap(score[a], score[b]) > 1e-4 for a, b in zip(span[:-1], span[1:]))


def rank_clusters_ok(ids, vals, logits, score, top, heads):
    """Rank fusion robustness (see gen.py's docstring).

    heads: list of (column j, term) for every head with a nonzero weight,
    term(rank) being the head's (decreasing) contribution at 1-based rank.
    A near-tie (<= 1e-4 relative in value, or <= 1e-4 in logit) could be
    ordered either way by a float32 implementation. Chains of near-ties form
    clusters; an item in a cluster may take any rank of that cluster. Require
    that no returned item is in a cluster, and that no clustered item could
    reach the k-th returned score even with its best possible ranks (1e-4
    relative margin). Items outside clusters keep exact ranks whatever order
    a cluster takes.
    """
    n = len(ids)
    bonus = np.zeros(n)
    clustered = np.zeros(n, dtype=bool)
    for j, term in heads:
        o = np.lexsort((ids, -vals[:, j]))  # rank order: position p has rank p + 1
        v, z = vals[o, j], logits[o, j]
        near = [not (relgap(v[t], v[t + 1]) > 1e-4 and
                     abs(z[t] - z[t + 1]) > 1e-4 * max(1.0, abs(z[t]), abs(z[t + 1])))
                for t in range(n - 1)]
        t = 0
        while t < n - 1:
            if not near[t]:
                t += 1
                continue
            s0 = t
            while t < n - 1 and near[t]:
                t += 1
            for p in range(s0, t + 1):
                clustered[o[p]] = True
                bonus[o[p]] += term(s0 + 1) - term(p + 1)
    if clustered[top].any():
        return False
    if len(top):
        kth = score[top[-1]]
        rest = np.setdiff1d(np.arange(n), top)
        if np.any(clustered[rest] & (score[rest] + bonus[rest] >= kth * (1 - 1e-4))):
            return False
    return True


def draw_candidates(rng, all_ids, id_set, spec):
    """(candidates or None, k) for a query of kind spec: "full" (a full scan),
    "k_over" (k = 60 > the 20..40 found ids), "k1", or "any"; candidate lists
    hold 1-3 unknown ids, 1-4 duplicated known ids, and sometimes an unknown
    id twice, shuffled."""
    if spec == "full":
        return None, int(rng.integers(5, 31))
    if spec == "k_over":
        m = int(rng.integers(20, 41))
    else:
        m = int(rng.integers(20, 196))
    picked = [all_ids[i] for i in rng.choice(len(all_ids), m, replace=False)]
    n_unknown = int(rng.integers(1, 4))
    unknown = []
    while len(unknown) < n_unknown:
        u = int(rng.integers(1, 2**53)) if rng.random() < 0.5 else int(rng.integers(1, 3000))
        if u not in id_set and u not in unknown:
            unknown.append(u)
    cands = picked + unknown
    n_dup = int(rng.integers(1, 5))
    cands += [picked[i] for i in rng.choice(len(picked), n_dup, replace=False)]
    if rng.random() < 0.5:
        cands.append(unknown[0])  # unknown ids are reported once
    cands = [cands[i] for i in rng.permutation(len(cands))]
    if spec == "k_over":
        k = 60
    elif spec == "k1":
        k = 1
    else:
        k = int(rng.integers(2, min(60, m) + 1))  # m distinct found ids
    return cands, k


def draw_query(rng, items, id_set, spec, user_dim, user_stats_dim, cat_values, ucc_dim):
    """One query's user vector, user inputs and candidates (v1 and v2 cases)."""
    user = f32(rng.normal(0.0, 1.0, user_dim)).tolist()
    stats = f32(rng.normal(0.0, 1.0, user_stats_dim)).tolist()
    nkeys = int(rng.integers(2, 6))
    keys = sorted(rng.choice(cat_values, nkeys, replace=False).tolist())
    ucc = {str(kv): f32(rng.normal(0.0, 0.5, ucc_dim)).tolist() for kv in keys}
    q = {
        "user": user,
        "user_dense": {"user_stats": stats},
        "user_by_item": {"user_category_ctr": ucc},
    }
    q["candidates"], q["k"] = draw_candidates(rng, items["ids"], id_set, spec)
    return q


def resolve(cands, id_to_row):
    """(found ids in first-seen order, or all ids ascending for a full scan;
    unknown ids in first-seen order, each once)."""
    if cands is None:
        return sorted(id_to_row), []
    seen, found, not_found = set(), [], []
    for cid in cands:
        if cid in seen:
            continue
        seen.add(cid)
        (found if cid in id_to_row else not_found).append(cid)
    return found, not_found


# --------------------------------------------------------------------------
# writers

ST_DTYPES = {"F32": "<f4", "F16": "<f2"}


def write_safetensors(path, tensors, generator, dtypes=None):
    """Write tensors (name -> float64 array holding dtype-exact values) as a
    safetensors file; dtypes maps a name to "F32" (the default), "F16" or
    "BF16"."""
    dtypes = dtypes or {}
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        dt = dtypes.get(name, "F32")
        shape = list(np.shape(tensors[name]))
        if dt == "BF16":
            x = np.asarray(tensors[name], dtype=np.float64)
            assert np.array_equal(bf16(x), x), name
            b = np.ascontiguousarray(bf16_bits(x), dtype="<u2").tobytes()
        else:
            a = np.ascontiguousarray(tensors[name], dtype=ST_DTYPES[dt])
            assert np.array_equal(a.astype(np.float64), np.asarray(tensors[name], dtype=np.float64)), name
            b = a.tobytes()
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    header["__metadata__"] = {"format": "pt", "generator": generator}
    hb = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    hb += b" " * (-len(hb) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for b in blobs:
            f.write(b)


def dumps(obj, indent=0):
    """JSON with dicts expanded and lists of scalars / of scalar lists kept compact."""
    pad = "  " * indent
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        if all(not isinstance(v, (dict, list)) for v in obj.values()) and len(obj) <= 4:
            return json.dumps(obj)
        parts = ["%s  %s: %s" % (pad, json.dumps(k), dumps(v, indent + 1)) for k, v in obj.items()]
        return "{\n" + ",\n".join(parts) + "\n" + pad + "}"
    if isinstance(obj, list):
        if all(not isinstance(v, (dict, list)) for v in obj):
            return json.dumps(obj)
        if all(isinstance(v, list) and all(not isinstance(x, (dict, list)) for x in v) for v in obj):
            return "[\n" + ",\n".join(pad + "  " + json.dumps(v) for v in obj) + "\n" + pad + "]"
        return "[\n" + ",\n".join(pad + "  " + dumps(v, indent + 1) for v in obj) + "\n" + pad + "]"
    return json.dumps(obj)


def write_text(path, text):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text + "\n")


def draw_ids(rng, n_items, small_hi):
    """`n_items` distinct ids, shuffled: 100 below `small_hi`, 100 up to
    2^32, the rest up to 2^53, and the edge values 2^53 - 1, 2^32, 2^32 - 1."""
    small = rng.choice(np.arange(1, small_hi), size=100, replace=False)
    mid = rng.integers(small_hi, 2**32, size=100)
    large = rng.integers(2**32, 2**53, size=n_items - 203)
    ids = np.concatenate([small, mid, large, [2**53 - 1, 2**32, 2**32 - 1]]).astype(np.int64)
    ids = np.unique(ids)
    assert len(ids) == n_items, len(ids)
    return rng.permutation(ids)


def with_nulls(rng, vals, p):
    """`vals` with each value None with probability `p`."""
    mask = rng.random(len(vals)) < p
    return [None if m else v for v, m in zip(vals, mask)]


def on_bounds(rng, vals, bounds):
    """Pins the `boundary <= x` semantics: two values exactly on each boundary."""
    for j, b in zip(rng.choice(len(vals), 2 * len(bounds), replace=False), bounds + bounds):
        vals[j] = float(b)
    return vals
