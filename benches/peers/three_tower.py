#!/usr/bin/env python3
"""Time onnxruntime, OpenVINO and numpy on vstore's three-tower scoring
and compare with vstore.

    python three_tower.py OUT_DIR [--bundle v1|mmoe] [--iters N] [--warmup N] [--no-peak]
                                  [--int8-per-tensor]

OUT_DIR/three_tower/ (OUT_DIR/mmoe/ with --bundle mmoe) holds what the Rust example `three_tower_bench` (or
fake_three_tower.py) wrote: the model bundle (bundle/model.json +
bundle/weights.safetensors), tt_meta.json, and per candidate count n the
already-gathered, concatenated model inputs tt_x_{n}.npy, vstore's fused
scores tt_expected_{n}.npy and vstore's timings tt_vstore.json. See
README.md for the contract.

The peers run the whole (unsplit) model on X [n, user_dim + item_dim + C]:
slice X into user / item / cross inputs, cross MLP, concat(user, item,
cross_out), upper MLP, the heads, head activations, calibration
(neg_sampling_rate), fusion -> one score per row; of contract v2 also
the MMoE parts (experts, a softmax gate per head, each head's mixture of
the experts) and head towers; any other v2 part (SE, dot/hadamard upper
inputs, normalize, the v2 fusion kinds) is refused with a message; then the top k
(np.argpartition + sort of the k). Peers:

  onnxruntime fp32  an ONNX graph built with onnx.helper from the bundle, run by an
                    InferenceSession on CPUExecutionProvider, 1 intra-op and
                    1 inter-op thread, ORT_ENABLE_ALL
  onnxruntime int8  the same graph through onnxruntime.quantization.quantize_dynamic
                    (Gemm written as MatMul + Add first; QInt8 weights, per output
                    column unless --int8-per-tensor), same session options
  openvino f32      the same ONNX file compiled by OpenVINO for the CPU, one
                    thread, INFERENCE_PRECISION_HINT f32, static shape per n
  openvino bf16     the same with INFERENCE_PRECISION_HINT bf16 (AMX where the
                    CPU has it)
  numpy fp32        the same math in float32 with `@` (OpenBLAS, 1 thread)

onnxruntime fp32 and numpy must match tt_expected (max relative error
< 1e-3) or the script stops; openvino f32 is skipped if it does not. A peer
that cannot be set up or run (openvino not installed, say) is skipped with
a message and listed under "skipped" in tt_peers.json. Every peer's scores,
and vstore's, are compared with a float64 numpy reference of the model on
the same X: max relative error and top-k overlap (|top-k rows ∩ reference
top-k rows| / k). Everything is single-threaded; we report the median
per-call latency (time.perf_counter) over PEER_PY_ITERS calls (default 50)
after a warm-up. FLOPs = 2 * n * sum(in * out) over the cross, upper and
head layers (the unsplit model). The table is printed and written to
OUT_DIR/three_tower/tt_peers.md and tt_peers.json.
"""
import os

# Single-threaded peers: these must be set before numpy / onnxruntime load.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import struct  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
import onnxruntime as ort  # noqa: E402

MAX_REL_ERR = 1e-3
OPSET = 17
# --bundle -> the directory of OUT the Rust example writes for it.
BUNDLE_DIRS = {"v1": "three_tower", "mmoe": "mmoe"}


def fail(msg):
    sys.exit(f"three_tower.py: {msg}")


def expect(cond, msg):
    if not cond:
        fail(f"bad data: {msg}")


# ---------------------------------------------------------------------------
# Loading the bundle and the data
# ---------------------------------------------------------------------------

ST_DTYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8"}


def load_safetensors(path):
    """{name: float32 array}. Uses the safetensors package when present and
    it reads the file, else parses the file: u64 LE header length, JSON
    header, raw data (F32, F16, F64 and BF16, which numpy has no type for)."""
    try:
        from safetensors.numpy import load_file
        raw = load_file(path)
    except (ImportError, TypeError, ValueError):
        raw = {}
        with open(path, "rb") as fh:
            (hlen,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(hlen))
            data = fh.read()
        for name, info in header.items():
            if name == "__metadata__":
                continue
            s, e = info["data_offsets"]
            if info["dtype"] == "BF16":
                bits = np.frombuffer(data[s:e], dtype="<u2").astype(np.uint32) << 16
                raw[name] = bits.view(np.float32).reshape(info["shape"])
                continue
            dt = ST_DTYPES.get(info["dtype"])
            expect(dt is not None, f"{path}: tensor {name}: dtype {info['dtype']} not supported")
            raw[name] = np.frombuffer(data[s:e], dtype=dt).reshape(info["shape"])
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in raw.items()}


ACTIVATIONS = ("relu", "sigmoid", "identity", "exp")
FORMATS = {"vstore.three_tower.v1": 1, "vstore.three_tower.v2": 2}
UPPER_PARTS = ("user", "item", "cross")


def unsupported(where, what):
    """A part of the bundle the peers do not implement: stop, naming it
    (vstore scores it; the peers would compute another model)."""
    fail(f"model.json {where}: {what} is not implemented by the peers (three_tower.py); "
         f"they implement: cross layers, upper.inputs {list(UPPER_PARTS)}, upper.layers, "
         f"upper.mmoe (experts, softmax gates), head towers, head layers, neg_sampling_rate, "
         f"fusion weighted_sum / product (without columns)")


def only_keys(obj, allowed, where):
    """Every key of obj is one the peers implement."""
    for key in obj:
        if key not in allowed:
            unsupported(f"{where}.{key}" if where else key, f"key {key!r}")


def parse_bundle(bdir):
    """model.json + weights -> a plain spec, with the shapes checked.
    Contract v1, and of v2 the parts listed in `unsupported`."""
    with open(os.path.join(bdir, "model.json")) as fh:
        m = json.load(fh)
    t = load_safetensors(os.path.join(bdir, "weights.safetensors"))
    fmt = FORMATS.get(m.get("format"))
    expect(fmt is not None, f"model.json format {m.get('format')!r}: want one of {list(FORMATS)}")
    # item_tower does not take part in scoring (vstore only validates it).
    only_keys(m, ("format", "name", "space", "version", "user_dim", "item_dim", "cross",
                  "upper", "heads", "fusion", "item_tower"), "")

    def tensor(name, where):
        expect(name in t, f"model.json {where}: tensor {name!r} not in weights.safetensors")
        return t[name]

    def bias(L, where, out):
        """The layer's bias, zeros when the bundle gives none."""
        if L.get("bias") is None:
            return np.zeros(out, np.float32)
        return tensor(L["bias"], f"{where}.bias")

    def layers(lst, where, in_dim):
        out = []
        for i, L in enumerate(lst):
            only_keys(L, ("weight", "bias", "activation"), f"{where}[{i}]")
            w = tensor(L["weight"], f"{where}[{i}].weight")
            b = bias(L, f"{where}[{i}]", w.shape[0])
            act = L.get("activation", "identity")
            expect(act in ACTIVATIONS, f"{where}[{i}].activation {act!r}: want one of {ACTIVATIONS}")
            expect(w.ndim == 2 and b.shape == (w.shape[0],),
                   f"{where}[{i}]: weight {w.shape} / bias {b.shape} is not [out, in] / [out]")
            if in_dim is not None:
                expect(w.shape[1] == in_dim, f"{where}[{i}].weight {L['weight']}: in={w.shape[1]}, want {in_dim}")
            in_dim = w.shape[0]
            out.append((w, b, act))
        return out, in_dim

    ud, idim = int(m["user_dim"]), int(m["item_dim"])
    only_keys(m["cross"], ("inputs", "layers"), "cross")
    expect(m["cross"]["layers"], "model.json: cross.layers is empty")
    cross, cross_out = layers(m["cross"]["layers"], "cross.layers", None)
    cross_in = cross[0][0].shape[1]
    up = m["upper"]
    only_keys(up, ("inputs", "layers", "mmoe") if fmt == 2 else ("layers",), "upper")
    parts = up.get("inputs", list(UPPER_PARTS))
    for i, part in enumerate(parts):
        if part not in UPPER_PARTS:
            unsupported(f"upper.inputs[{i}]", f"the upper input part {part!r}")
    expect(len(set(parts)) == len(parts), f"model.json upper.inputs {parts}: a part twice")
    width = {"user": ud, "item": idim, "cross": cross_out}
    upper, top = layers(up.get("layers") or [], "upper.layers", sum(width[p] for p in parts))
    names = [h["name"] for h in m["heads"]]
    mmoe = None
    if up.get("mmoe") is not None:
        mm = up["mmoe"]
        only_keys(mm, ("experts", "gates"), "upper.mmoe")
        experts, dims = [], set()
        for e, ex in enumerate(mm["experts"]):
            only_keys(ex, ("layers",), f"upper.mmoe.experts[{e}]")
            ls, d = layers(ex["layers"], f"upper.mmoe.experts[{e}].layers", top)
            experts.append(ls)
            dims.add(d)
        expect(len(experts) >= 2 and len(dims) == 1,
               f"upper.mmoe.experts: want two or more experts of one output dimension, got {sorted(dims)}")
        expect(sorted(mm["gates"]) == sorted(names),
               f"upper.mmoe.gates {sorted(mm['gates'])}: want one per head {names}")
        gates = []
        for h in names:
            g = mm["gates"][h]
            only_keys(g, ("weight", "bias"), f"upper.mmoe.gates.{h}")
            gw = tensor(g["weight"], f"upper.mmoe.gates.{h}.weight")
            gb = bias(g, f"upper.mmoe.gates.{h}", len(experts))
            expect(gw.shape == (len(experts), top) and gb.shape == (len(experts),),
                   f"upper.mmoe.gates.{h}: weight {gw.shape} / bias {gb.shape}, want "
                   f"[{len(experts)}, {top}] / [{len(experts)}]")
            gates.append((gw, gb))
        mmoe = {"experts": experts, "gates": gates, "dim": dims.pop()}
    head_in = mmoe["dim"] if mmoe else top
    heads = []
    for i, h in enumerate(m["heads"]):
        only_keys(h, ("name", "weight", "bias", "activation", "neg_sampling_rate")
                  + (("tower",) if fmt == 2 else ()), f"heads[{i}]")
        tower, hin = [], head_in
        if h.get("tower") is not None:
            only_keys(h["tower"], ("layers",), f"heads[{i}].tower")
            tower, hin = layers(h["tower"]["layers"], f"heads[{i}].tower.layers", head_in)
        w = tensor(h["weight"], f"heads[{i}].weight")
        b = bias(h, f"heads[{i}]", 1)
        expect(w.shape == (1, hin) and b.shape == (1,),
               f"heads[{i}] ({h['name']}): weight {w.shape} / bias {b.shape}, want [1, {hin}] / [1]")
        act = h.get("activation", "identity")
        expect(act in ACTIVATIONS, f"heads[{i}].activation {act!r}: want one of {ACTIVATIONS}")
        heads.append({"name": h["name"], "tower": tower, "w": w, "b": b, "act": act,
                      "nsr": h.get("neg_sampling_rate")})
    fusion = m["fusion"]
    if fusion["kind"] in ("weighted_sum", "product"):
        only_keys(fusion, ("kind", "weights"), "fusion")
        for nm in fusion["weights"]:
            expect(nm in names, f"fusion.weights: unknown head {nm!r} (heads: {names})")
    elif fusion["kind"] != "rank":
        unsupported("fusion.kind", f"fusion kind {fusion['kind']!r}")
    return {"model": m, "format": fmt, "name": m.get("name", "default"),
            "user_dim": ud, "item_dim": idim, "cross_in": cross_in,
            "cross": cross, "upper_inputs": parts, "upper": upper, "mmoe": mmoe,
            "heads": heads, "fusion": fusion}


def dense_layers(spec):
    """Every dense map of the model (weight [out, in]), in model order."""
    ws = [w for w, _, _ in spec["cross"] + spec["upper"]]
    if spec["mmoe"]:
        ws += [w for ex in spec["mmoe"]["experts"] for w, _, _ in ex]
        ws += [gw for gw, _ in spec["mmoe"]["gates"]]
    for h in spec["heads"]:
        ws += [w for w, _, _ in h["tower"]] + [h["w"]]
    return ws


def flops_per_row(spec):
    """2 * multiply-adds of every dense map (vstore's Model::macs_per_item);
    the mixture of experts' weighted sum is not counted."""
    return 2 * sum(int(w.shape[0]) * int(w.shape[1]) for w in dense_layers(spec))


def shared_head_input(spec):
    """Whether every head reads the same vector (no MMoE, no towers): then
    all heads run as one [n, H] product."""
    return spec["mmoe"] is None and not any(h["tower"] for h in spec["heads"])


def load_data(tdir, spec):
    expect(os.path.exists(os.path.join(tdir, "tt_meta.json")),
           f"no tt_meta.json in {tdir}: run the Rust example (or fake_three_tower.py) first")
    with open(os.path.join(tdir, "tt_meta.json")) as fh:
        meta = json.load(fh)
    D = spec["user_dim"] + spec["item_dim"] + spec["cross_in"]
    expect(meta["user_dim"] == spec["user_dim"] and meta["item_dim"] == spec["item_dim"],
           f"tt_meta.json user_dim/item_dim {meta['user_dim']}/{meta['item_dim']} != model.json "
           f"{spec['user_dim']}/{spec['item_dim']}")
    expect(meta["cross_in_dim"] == spec["cross_in"],
           f"tt_meta.json cross_in_dim {meta['cross_in_dim']} != cross.layers[0] in {spec['cross_in']}")
    xs, exps = {}, {}
    for n in meta["ns"]:
        X = np.load(os.path.join(tdir, f"tt_x_{n}.npy"))
        e = np.load(os.path.join(tdir, f"tt_expected_{n}.npy"))
        expect(X.dtype == np.float32 and X.shape == (n, D), f"tt_x_{n}.npy: want float32 [{n}, {D}], got {X.dtype} {X.shape}")
        expect(e.dtype == np.float32 and e.shape == (n,), f"tt_expected_{n}.npy: want float32 [{n}], got {e.dtype} {e.shape}")
        expect(np.isfinite(X).all(), f"tt_x_{n}.npy has NaN or infinite values")
        expect(meta["k"] <= n, f"k={meta['k']} > n={n}")
        xs[n], exps[n] = np.ascontiguousarray(X), e
    vpath = os.path.join(tdir, "tt_vstore.json")
    vstore = {}
    if os.path.exists(vpath):
        with open(vpath) as fh:
            vstore = {int(k): v for k, v in json.load(fh).items()}
    else:
        print(f"three_tower.py: no {vpath}; vstore rows will be empty", file=sys.stderr)
    return meta, xs, exps, vstore


# ---------------------------------------------------------------------------
# The ONNX graph
# ---------------------------------------------------------------------------

def build_onnx(spec):
    """The whole model as an ONNX graph: x [n, D] -> score [n]."""
    ud, idim, cin = spec["user_dim"], spec["item_dim"], spec["cross_in"]
    D = ud + idim + cin
    nodes, inits = [], []
    counter = [0]

    def name(prefix):
        counter[0] += 1
        return f"{prefix}_{counter[0]}"

    def const(arr, prefix="c"):
        nm = name(prefix)
        inits.append(numpy_helper.from_array(np.asarray(arr), nm))
        return nm

    def op(kind, inputs, prefix=None, **attrs):
        out = name(prefix or kind.lower())
        nodes.append(helper.make_node(kind, inputs, [out], **attrs))
        return out

    def act(x, a):
        if a == "identity":
            return x
        return op({"relu": "Relu", "sigmoid": "Sigmoid", "exp": "Exp"}[a], [x])

    def slice_cols(x, lo, hi, prefix):
        return op("Slice", [x, const(np.array([lo], np.int64)), const(np.array([hi], np.int64)),
                            const(np.array([1], np.int64))], prefix)

    def dense(x, w, b, a, prefix):
        # Gemm with transB=1 takes W in nn.Linear's [out, in] layout as is.
        y = op("Gemm", [x, const(w, prefix + "_w"), const(b, prefix + "_b")], prefix, transB=1)
        return act(y, a)

    part = {"user": slice_cols("x", 0, ud, "user"),
            "item": slice_cols("x", ud, ud + idim, "item")}
    h = slice_cols("x", ud + idim, D, "cross_in")
    for i, (w, b, a) in enumerate(spec["cross"]):
        h = dense(h, w, b, a, f"cross{i}")
    part["cross"] = h
    parts = spec["upper_inputs"]
    h = part[parts[0]] if len(parts) == 1 else op("Concat", [part[p] for p in parts], "upper_in", axis=1)
    for i, (w, b, a) in enumerate(spec["upper"]):
        h = dense(h, w, b, a, f"upper{i}")

    heads = spec["heads"]
    H = len(heads)
    mm = spec["mmoe"]
    if mm:
        # Experts: the first layers of all experts as one Gemm when they
        # share an activation, then each expert's further layers; the
        # outputs as [n, E, D].
        E, Dx = len(mm["experts"]), mm["dim"]
        firsts = [ex[0] for ex in mm["experts"]]
        if len({a for _, _, a in firsts}) == 1:
            y = dense(h, np.concatenate([w for w, _, _ in firsts], 0),
                      np.concatenate([b for _, b, _ in firsts], 0), firsts[0][2], "experts0")
            if any(len(ex) > 1 for ex in mm["experts"]):
                outs = [name("expert_in") for _ in range(E)]
                nodes.append(helper.make_node(
                    "Split", [y, const(np.array([w.shape[0] for w, _, _ in firsts], np.int64))],
                    outs, axis=1))
            else:
                outs = None
        else:
            outs = [dense(h, w, b, a, f"expert{e}_0") for e, (w, b, a) in enumerate(firsts)]
        if outs is not None:
            for e, ex in enumerate(mm["experts"]):
                for i, (w, b, a) in enumerate(ex[1:], 1):
                    outs[e] = dense(outs[e], w, b, a, f"expert{e}_{i}")
            y = op("Concat", outs, "experts", axis=1)
        ex3 = op("Reshape", [y, const(np.array([-1, E, Dx], np.int64))], "experts3")
        # All gates in one Gemm, softmax over the experts per head, then
        # every head's mixture as one batched [H, E] x [E, D] per row.
        g = op("Gemm", [h, const(np.concatenate([gw for gw, _ in mm["gates"]], 0), "gates_w"),
                        const(np.concatenate([gb for _, gb in mm["gates"]], 0), "gates_b")],
               "gates", transB=1)
        g = op("Softmax", [op("Reshape", [g, const(np.array([-1, H, E], np.int64))])], axis=-1)
        mix = op("MatMul", [g, ex3], "mixtures")  # [n, H, D]
        head_in = [op("Gather", [mix, const(np.array(j, np.int64), "head_idx")], "head_in", axis=1)
                   for j in range(H)]
    else:
        head_in = [h] * H

    if shared_head_input(spec):
        # All heads in one Gemm: [n, top] x [H, top]^T -> [n, H], then split.
        z = op("Gemm", [h, const(np.concatenate([hd["w"] for hd in heads], 0), "heads_w"),
                        const(np.concatenate([hd["b"] for hd in heads], 0), "heads_b")], "heads", transB=1)
        if H == 1:
            cols = [z]
        else:
            cols = [name("head_col") for _ in range(H)]
            nodes.append(helper.make_node("Split", [z, const(np.ones(H, np.int64))], cols, axis=1))
    else:
        cols = []
        for j, hd in enumerate(heads):
            t = head_in[j]
            for i, (w, b, a) in enumerate(hd["tower"]):
                t = dense(t, w, b, a, f"tower_{hd['name']}{i}")
            cols.append(dense(t, hd["w"], hd["b"], "identity", f"head_{hd['name']}"))
    one = None
    ps = {}
    for hd, c in zip(heads, cols):
        q = act(c, hd["act"])
        a = hd["nsr"]
        if a is not None:
            # p = a*q / ((1 - q) + a*q)
            one = one or const(np.array(1.0, np.float32), "one")
            aq = op("Mul", [q, const(np.array(a, np.float32), "nsr")])
            q = op("Div", [aq, op("Add", [op("Sub", [one, q]), aq])], "calibrated")
        ps[hd["name"]] = q

    f = spec["fusion"]
    if f["kind"] == "weighted_sum":
        terms = [op("Mul", [ps[nm], const(np.array(w, np.float32), "fw")]) for nm, w in f["weights"].items()]
        s = terms[0] if len(terms) == 1 else op("Sum", terms)
    elif f["kind"] == "product":
        s = None
        for nm, w in f["weights"].items():
            t = ps[nm] if w == 1.0 else op("Pow", [ps[nm], const(np.array(w, np.float32), "fw")])
            s = t if s is None else op("Mul", [s, t])
    elif f["kind"] == "rank":
        raise NotImplementedError(
            "three_tower.py: fusion kind 'rank' is not implemented for the peers (it needs the "
            "per-head ranks among the query's candidates; ONNX/numpy versions are not written yet)")
    else:
        fail(f"fusion.kind {f['kind']!r} unknown (want weighted_sum, product or rank)")
    nodes.append(helper.make_node("Reshape", [s, const(np.array([-1], np.int64))], ["score"]))

    graph = helper.make_graph(
        nodes, "vstore_three_tower",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", D])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["n"])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="vstore-benches-peers")
    model.ir_version = min(model.ir_version, 9)  # readable by older onnxruntime too
    onnx.checker.check_model(model)
    return model


def ort_session(model, optimized_path=None):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if optimized_path:
        # Saved for inspection only (it may hold hardware-specific ops).
        so.optimized_model_filepath = optimized_path
        so.log_severity_level = 3  # silence the warning that says so
    return ort.InferenceSession(model.SerializeToString(), sess_options=so,
                                providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------------------
# onnxruntime int8: dynamic quantization of the same graph
# ---------------------------------------------------------------------------

def gemm_to_matmul(model):
    """The same graph with every Gemm(x, W, b, transB=1) written as
    Add(MatMul(x, W^T), b). onnxruntime's dynamic quantization (IntegerOps
    mode) quantizes MatMul nodes but not Gemm, so without this it would
    leave the model in float32."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    nodes = []
    for nd in g.node:
        if nd.op_type != "Gemm":
            nodes.append(nd)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in nd.attribute}
        if (attrs.get("transA", 0) != 0 or attrs.get("transB", 0) != 1 or attrs.get("alpha", 1.0) != 1.0
                or attrs.get("beta", 1.0) != 1.0 or nd.input[1] not in inits):
            raise ValueError(f"gemm_to_matmul: Gemm {nd.output[0]} is not Gemm(x, W const, b, transB=1)")
        wt = nd.input[1] + "_t"
        inits[wt] = np.ascontiguousarray(inits[nd.input[1]].T)
        has_bias = len(nd.input) > 2 and nd.input[2]
        mm_out = nd.output[0] + "_mm" if has_bias else nd.output[0]
        nodes.append(helper.make_node("MatMul", [nd.input[0], wt], [mm_out], name=nd.output[0] + "_matmul"))
        if has_bias:
            nodes.append(helper.make_node("Add", [mm_out, nd.input[2]], [nd.output[0]],
                                          name=nd.output[0] + "_bias"))
    used = {i for nd in nodes for i in nd.input}
    del g.node[:]
    g.node.extend(nodes)
    del g.initializer[:]
    g.initializer.extend(numpy_helper.from_array(a, nm) for nm, a in inits.items() if nm in used)
    onnx.checker.check_model(m)
    return m


def ort_int8_model(model, path, per_channel):
    """quantize_dynamic of the graph (Gemm written as MatMul + Add): every
    MatMul with a constant weight gets int8 weights (QInt8, symmetric,
    per output column when per_channel, else one scale per matrix; full
    8-bit range, reduce_range off) and activations quantized to uint8 at run
    time, per tensor, per call (DynamicQuantizeLinear); the batched MMoE
    mixture MatMul (both inputs activations) and everything after the
    heads' products stay float32. Saves the model at path and returns it
    with {op_type: count}."""
    import logging
    from onnxruntime.quantization import QuantType, quantize_dynamic
    log = logging.getLogger()
    level = log.level
    log.setLevel(logging.ERROR)  # quantize_dynamic's advice to pre-process first
    try:
        quantize_dynamic(gemm_to_matmul(model), path, op_types_to_quantize=["MatMul"],
                         per_channel=per_channel, reduce_range=False, weight_type=QuantType.QInt8,
                         extra_options={"MatMulConstBOnly": True})
    finally:
        log.setLevel(level)
    q = onnx.load(path)
    ops = {}
    for nd in q.graph.node:
        ops[nd.op_type] = ops.get(nd.op_type, 0) + 1
    if not ops.get("MatMulInteger"):
        raise RuntimeError(f"quantize_dynamic quantized no MatMul (ops: {ops})")
    return q, ops


# ---------------------------------------------------------------------------
# OpenVINO
# ---------------------------------------------------------------------------

def ov_config(precision):
    """compile_model config: one inference thread, one stream, latency hint,
    no core pinning (the other peers are not pinned either), and the
    precision the CPU plugin runs the model in (its default on a CPU with
    bf16 support is bf16, hence f32 given explicitly)."""
    return {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": 1, "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False}


def ov_exec_summary(compiled):
    """{"layerType primitiveType precision": count} of the compiled model's
    executed nodes (its runtime model), constants and inputs left out: it
    shows which kernels run, e.g. brgemm_avx512_amx_bf16 for AMX."""
    out = {}
    for node in compiled.get_runtime_model().get_ordered_ops():
        rt = node.get_rt_info()
        get = lambda key: rt[key].astype(str) if key in rt else "?"  # noqa: E731
        kind = get("layerType")
        if kind in ("Const", "Input", "Output"):
            continue
        key = f"{kind} {get('primitiveType')} {get('runtimePrecision')}"
        out[key] = out.get(key, 0) + 1
    return out


def ov_scorer(ov, core, onnx_path, n, D, precision):
    """fn(X) -> scores for X [n, D]: the ONNX graph read by OpenVINO,
    reshaped to the static shape [n, D] (one compiled model per n) and
    compiled for the CPU with ov_config(precision). Returns (fn, info)."""
    model = core.read_model(onnx_path)
    model.reshape({"x": ov.PartialShape([n, D])})
    compiled = core.compile_model(model, "CPU", ov_config(precision))
    req = compiled.create_infer_request()
    info = {"inference_precision": str(compiled.get_property("INFERENCE_PRECISION_HINT")),
            "inference_num_threads": int(compiled.get_property("INFERENCE_NUM_THREADS")),
            "num_streams": int(compiled.get_property("NUM_STREAMS")),
            "exec": ov_exec_summary(compiled)}

    def fn(X):
        # Input and output share memory with numpy: no copies (the output is
        # overwritten by the next call).
        return req.infer({0: X}, share_inputs=True, share_outputs=True)[0]
    return fn, info


# ---------------------------------------------------------------------------
# numpy
# ---------------------------------------------------------------------------

def numpy_scorer(spec):
    """fn(X) -> float32 [n], the same math as the ONNX graph. W.T is made
    contiguous once here (set-up, not timed)."""
    ud, idim = spec["user_dim"], spec["item_dim"]
    tr = lambda ls: [(np.ascontiguousarray(w.T), b, a) for w, b, a in ls]  # noqa: E731
    cross, upper = tr(spec["cross"]), tr(spec["upper"])
    parts = spec["upper_inputs"]
    heads = spec["heads"]
    H = len(heads)
    shared = shared_head_input(spec)
    if shared:
        hw = np.ascontiguousarray(np.concatenate([hd["w"] for hd in heads], 0).T)
        hb = np.concatenate([hd["b"] for hd in heads], 0)
    towers = [(tr(hd["tower"]), np.ascontiguousarray(hd["w"].T), hd["b"]) for hd in heads]
    mm = spec["mmoe"]
    if mm:
        E, Dx = len(mm["experts"]), mm["dim"]
        firsts = [ex[0] for ex in mm["experts"]]
        fuse_first = len({a for _, _, a in firsts}) == 1
        # The experts' first layers side by side: one [W, E * D1] product.
        ew = np.ascontiguousarray(np.concatenate([w for w, _, _ in firsts], 0).T)
        eb = np.concatenate([b for _, b, _ in firsts], 0)
        ea = firsts[0][2]
        e_splits = np.cumsum([w.shape[0] for w, _, _ in firsts])[:-1]
        rests = [tr(ex[1:]) for ex in mm["experts"]]
        e_first = [tr([f])[0] for f in firsts]
        gw = np.ascontiguousarray(np.concatenate([g for g, _ in mm["gates"]], 0).T)
        gb = np.concatenate([b for _, b in mm["gates"]], 0)
    col = {hd["name"]: j for j, hd in enumerate(heads)}
    f = spec["fusion"]
    if f["kind"] not in ("weighted_sum", "product"):
        raise NotImplementedError(f"numpy peer: fusion kind {f['kind']!r} not implemented")
    fw = [(col[nm], np.float32(w)) for nm, w in f["weights"].items()]
    one = np.float32(1.0)

    def act(h, a):
        if a == "relu":
            return np.maximum(h, 0, out=h)
        if a == "sigmoid":
            return one / (one + np.exp(-h))
        if a == "exp":
            return np.exp(h)
        return h

    def layer(h, wt, b, a):
        y = h @ wt
        y += b
        return act(y, a)

    def experts(x):
        """The expert outputs as [n, E, D]."""
        if fuse_first:
            y = layer(x, ew, eb, ea)
            if not any(rests):
                return y.reshape(-1, E, Dx)
            outs = np.split(y, e_splits, axis=1)
        else:
            outs = [layer(x, *l0) for l0 in e_first]
        for e, rest in enumerate(rests):
            for wt, b, a in rest:
                outs[e] = layer(outs[e], wt, b, a)
        return np.stack(outs, axis=1)

    def fn(X):
        h = X[:, ud + idim:]
        for wt, b, a in cross:
            h = layer(h, wt, b, a)
        part = {"user": X[:, :ud], "item": X[:, ud:ud + idim], "cross": h}
        h = part[parts[0]] if len(parts) == 1 else np.concatenate([part[p] for p in parts], axis=1)
        for wt, b, a in upper:
            h = layer(h, wt, b, a)
        if shared:
            z = h @ hw
            z += hb
            zs = [z[:, j] for j in range(H)]
        else:
            if mm:
                ex = experts(h)
                g = h @ gw
                g += gb
                g = g.reshape(-1, H, E)
                g -= g.max(axis=2, keepdims=True)
                np.exp(g, out=g)
                g /= g.sum(axis=2, keepdims=True)
                # Every head's mixture at once: per row [H, E] x [E, D]
                # (5x faster here than summing the E scaled experts).
                mix = np.matmul(g, ex)
            zs = []
            for j, (tw, wt, b) in enumerate(towers):
                t = mix[:, j, :] if mm else h
                for twt, tb, ta in tw:
                    t = layer(t, twt, tb, ta)
                z = t @ wt
                z += b
                zs.append(z[:, 0])
        ps = []
        for j, hd in enumerate(heads):
            q = act(zs[j], hd["act"])
            a = hd["nsr"]
            if a is not None:
                aq = np.float32(a) * q
                q = aq / ((one - q) + aq)
            ps.append(q)
        if f["kind"] == "weighted_sum":
            s = np.zeros(X.shape[0], np.float32)
            for j, w in fw:
                s += w * ps[j]
        else:
            s = np.ones(X.shape[0], np.float32)
            for j, w in fw:
                s *= ps[j] if w == 1.0 else np.power(ps[j], w)
        return s
    return fn


# ---------------------------------------------------------------------------
# float64 reference
# ---------------------------------------------------------------------------

def reference_scorer(spec):
    """fn(X) -> float64 [n]: the model in float64, written plainly (one
    product per layer, every expert, gate and head on its own), apart from
    the ONNX graph and numpy_scorer. The top-k overlaps and relative errors
    of every peer (and of vstore's scores) are measured against it."""
    ud, idim = spec["user_dim"], spec["item_dim"]
    f64 = lambda ls: [(w.astype(np.float64), b.astype(np.float64), a) for w, b, a in ls]  # noqa: E731
    cross, upper, parts = f64(spec["cross"]), f64(spec["upper"]), spec["upper_inputs"]
    mm = spec["mmoe"]
    experts = [f64(ex) for ex in mm["experts"]] if mm else []
    gates = [(gw.astype(np.float64), gb.astype(np.float64)) for gw, gb in mm["gates"]] if mm else []
    heads = [(f64(h["tower"]), h["w"].astype(np.float64), h["b"].astype(np.float64), h["act"], h["nsr"])
             for h in spec["heads"]]
    names = [h["name"] for h in spec["heads"]]
    f = spec["fusion"]
    if f["kind"] not in ("weighted_sum", "product"):
        raise NotImplementedError(f"float64 reference: fusion kind {f['kind']!r} not implemented")
    act = {"relu": lambda x: np.maximum(x, 0.0), "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
           "exp": np.exp, "identity": lambda x: x}

    def mlp(h, ls):
        for w, b, a in ls:
            h = act[a](h @ w.T + b)
        return h

    def fn(X):
        X = X.astype(np.float64)
        with np.errstate(over="ignore"):
            part = {"user": X[:, :ud], "item": X[:, ud:ud + idim], "cross": mlp(X[:, ud + idim:], cross)}
            h = mlp(np.concatenate([part[p] for p in parts], axis=1), upper)
            outs = [mlp(h, ex) for ex in experts]
            ps = {}
            for j, (tower, w, b, a, nsr) in enumerate(heads):
                t = h
                if mm:
                    g = h @ gates[j][0].T + gates[j][1]
                    g = np.exp(g - g.max(axis=1, keepdims=True))
                    g /= g.sum(axis=1, keepdims=True)
                    t = sum(g[:, e:e + 1] * outs[e] for e in range(len(outs)))
                q = act[a]((mlp(t, tower) @ w.T + b)[:, 0])
                ps[names[j]] = q if nsr is None else nsr * q / ((1.0 - q) + nsr * q)
        if f["kind"] == "weighted_sum":
            return sum(wt * ps[nm] for nm, wt in f["weights"].items())
        return np.prod([ps[nm] ** wt for nm, wt in f["weights"].items()], axis=0)
    return fn


def topk(s, k):
    """Row indices and scores of the k best, best first, ties by row."""
    idx = np.argpartition(-s, k - 1)[:k]
    sc = s[idx]
    o = np.lexsort((idx, -sc))
    return idx[o], sc[o]


# ---------------------------------------------------------------------------
# Timing and checks
# ---------------------------------------------------------------------------

def timeit(fn, iters, warmup):
    """{median, p10, min} in ms of fn() over iters calls after warmup calls; GC off.
    Also cpu_per_wall: the process's CPU time (all threads) over the wall
    time of the timed calls, about 1.0 when one thread does the work."""
    for _ in range(warmup):
        fn()
    ts = np.empty(iters)
    gc_on = gc.isenabled()
    gc.disable()
    try:
        c0, w0 = time.process_time(), time.perf_counter()
        for j in range(iters):
            t0 = time.perf_counter()
            fn()
            ts[j] = time.perf_counter() - t0
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    finally:
        if gc_on:
            gc.enable()
    ts *= 1e3
    return {"median_ms": float(np.median(ts)), "p10_ms": float(np.percentile(ts, 10)),
            "min_ms": float(ts.min()), "cpu_per_wall": cpu / wall if wall > 0 else None}


def rel_err(got, want):
    """max |got - want| / max(|want|, 1e-3 * max|want|): relative error per
    row, with rows near zero measured against 1e-3 of the largest score (so a
    score crossing zero does not blow it up)."""
    got, want = got.astype(np.float64), want.astype(np.float64)
    floor = max(1e-3 * float(np.max(np.abs(want))), 1e-30)
    return float(np.max(np.abs(got - want) / np.maximum(np.abs(want), floor)))


def peak_sgemm(size=2048, reps=5):
    """Single-threaded float32 GEMM rate of numpy's BLAS: a reference for the
    core's FMA throughput (a large square matmul runs near peak)."""
    rng = np.random.default_rng(0)
    A = rng.standard_normal((size, size), dtype=np.float32)
    B = rng.standard_normal((size, size), dtype=np.float32)
    C = np.empty((size, size), np.float32)
    np.matmul(A, B, out=C)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        np.matmul(A, B, out=C)
        ts.append(time.perf_counter() - t0)
    return {"size": size, "median_ms": float(np.median(ts) * 1e3),
            "gflops": 2.0 * size ** 3 / float(np.median(ts)) / 1e9,
            "best_gflops": 2.0 * size ** 3 / float(min(ts)) / 1e9}


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------

def fmt(v, spec=".3f"):
    return "-" if v is None else format(v, spec)


def md_table(header, body):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(x) for x in row) + " |" for row in body]
    return "\n".join(lines)


# The peers, in table order: key (in tt_peers.json), label.
PEERS = [
    ("ort", "onnxruntime fp32"),
    ("ort_int8", "onnxruntime int8 dynamic"),
    ("ov_f32", "openvino f32"),
    ("ov_bf16", "openvino bf16"),
    ("numpy", "numpy fp32"),
]
LABEL = dict(PEERS)
# Must match tt_expected to MAX_REL_ERR: a larger error stops the script for
# these (they define the comparison) ...
REQUIRED_MATCH = ("ort", "numpy")
# ... and skips these (fp32 too, so a larger error means a wrong model).
OPTIONAL_MATCH = ("ov_f32",)


def header(k):
    return ["method", "median ms", "p10 ms", "GFLOP/s", "ratio (peer/vstore)",
            f"top-{k} overlap", "max rel err"]


def rows_for(res, chk, vst, flops):
    """Table rows (dicts) for one n. Overlap and error are against the
    float64 reference (chk["peers"])."""
    vms = vst.get("median_ms") if vst else None

    def row(method, t, acc=None, has_flops=True):
        ms = t.get("median_ms") if t else None
        return {"method": method, "median_ms": ms, "p10_ms": t.get("p10_ms") if t else None,
                "gflops": flops / (ms * 1e-3) / 1e9 if has_flops and ms else None,
                "ratio": ms / vms if ms and vms else None,
                "overlap": acc["topk_overlap_f64"] if acc else None,
                "rel_err": acc["max_rel_err_f64"] if acc else None}

    out = [row("vstore (ids in, top k out)", vst or {}, chk["peers"].get("vstore"))]
    for vn, vms_v in sorted((vst or {}).get("variants", {}).items()):
        out.append(row(f"vstore variant: {vn}", {"median_ms": vms_v},
                       chk["peers"].get(f"vstore variant: {vn}")))
    for key, label in PEERS:
        if key in res:
            acc = chk["peers"][key]
            out.append(row(f"{label} run + top-k", res[key + "_topk"], acc))
            out.append(row(f"{label} run only", res[key], acc))
    out.append(row("top-k only (argpartition + sort k)", res["topk"], has_flops=False))
    return out


def cells(r):
    return [r["method"], fmt(r["median_ms"]), fmt(r["p10_ms"]), fmt(r["gflops"], ".1f"),
            "-" if r["ratio"] is None else f"{r['ratio']:.2f}x",
            fmt(r["overlap"]), fmt(r["rel_err"], ".1e")]


def text_table(hdr, rows):
    cs = [hdr] + [cells(r) for r in rows]
    w = [max(len(c[i]) for c in cs) for i in range(len(hdr))]
    return "\n".join("  ".join(c[i].ljust(w[i]) for i in range(len(c))).rstrip() for c in cs)


def count_ops(model):
    ops = {}
    for nd in model.graph.node:
        ops[nd.op_type] = ops.get(nd.op_type, 0) + 1
    return ops


def why(e):
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--iters", type=int, default=int(os.environ.get("PEER_PY_ITERS", "50")))
    ap.add_argument("--warmup", type=int, default=int(os.environ.get("PEER_PY_WARMUP", "5")))
    ap.add_argument("--no-peak", action="store_true", help="skip the sgemm peak reference")
    ap.add_argument("--bundle", default="v1", choices=sorted(BUNDLE_DIRS),
                    help="which export of three_tower_bench to read (its --bundle): "
                         "OUT/three_tower (v1) or OUT/mmoe")
    ap.add_argument("--int8-per-tensor", action="store_true",
                    help="onnxruntime int8: one weight scale per matrix instead of one per output column")
    a = ap.parse_args()
    tdir = os.path.join(a.out, BUNDLE_DIRS[a.bundle])
    expect(os.path.isdir(tdir), f"no {tdir}: run the Rust example (or fake_three_tower.py) first")

    spec = parse_bundle(os.path.join(tdir, "bundle"))
    meta, xs, exps, vstore = load_data(tdir, spec)
    k = int(meta["k"])
    fpr = flops_per_row(spec)
    D = spec["user_dim"] + spec["item_dim"] + spec["cross_in"]
    io = lambda ls: [list(w.shape[::-1]) for w, _, _ in ls]  # noqa: E731
    dims = {"format": spec["format"], "name": spec["name"],
            "user_dim": spec["user_dim"], "item_dim": spec["item_dim"], "cross_in": spec["cross_in"],
            "cross": io(spec["cross"]), "upper_inputs": spec["upper_inputs"],
            "upper": io(spec["upper"]),
            "heads": [f"{h['name']}:{h['act']}" + (f"(nsr={h['nsr']})" if h["nsr"] is not None else "")
                      + (f" tower {io(h['tower'])}" if h["tower"] else "")
                      for h in spec["heads"]],
            "fusion": spec["fusion"]["kind"]}
    if spec["mmoe"]:
        dims["mmoe"] = {"experts": [io(ex) for ex in spec["mmoe"]["experts"]],
                        "gates": [list(gw.shape[::-1]) for gw, _ in spec["mmoe"]["gates"]]}
    if "macs_per_item" in meta and 2 * meta["macs_per_item"] != fpr:
        print(f"  note: tt_meta.json macs_per_item {meta['macs_per_item']} (vstore's Model::macs_per_item) "
              f"!= {fpr // 2} counted here", file=sys.stderr)
    versions = {"python": platform.python_version(), "numpy": np.__version__,
                "onnx": onnx.__version__, "onnxruntime": ort.__version__}
    skipped = {}

    def skip(key, reason):
        skipped[key] = reason
        print(f"three_tower: skipping {LABEL[key]}: {reason}")

    # OpenVINO is optional: without it (or its CPU plugin) both of its
    # peers are skipped.
    ov = core = None
    ov_info = {}
    try:
        import openvino as ov
        core = ov.Core()
        versions["openvino"] = ov.__version__.split("-")[0]
        ov_info = {"version": ov.__version__,
                   "optimization_capabilities": list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")),
                   "config": {p: ov_config(p) for p in ("f32", "bf16")}, "exec": {}}
    except Exception as e:  # ImportError, or the CPU plugin failing to load
        for key in ("ov_f32", "ov_bf16"):
            skip(key, f"openvino not usable ({why(e)})")
    print(f"three_tower: bundle {spec['name']!r} (contract v{spec['format']}): layers (in, out) "
          f"cross {dims['cross']} upper {dims['upper_inputs']} {dims['upper']}"
          + (f" mmoe {dims['mmoe']}" if "mmoe" in dims else "")
          + f" heads {dims['heads']} fusion {dims['fusion']}; {fpr} FLOP/row; k={k}")
    print(f"  {' '.join(f'{kk} {v}' for kk, v in versions.items())}; "
          f"{a.iters} timed calls after {a.warmup} warm-up, 1 thread")
    if ov_info:
        print(f"  openvino CPU OPTIMIZATION_CAPABILITIES: {ov_info['optimization_capabilities']}")

    model = build_onnx(spec)
    onnx_path = os.path.join(tdir, "tt_model.onnx")
    onnx.save(model, onnx_path)
    opt_path = os.path.join(tdir, "tt_model.ort_optimized.onnx")
    sess = ort_session(model, opt_path)
    opt_ops = count_ops(onnx.load(opt_path))
    print(f"  onnxruntime graph after ORT_ENABLE_ALL: {opt_ops}")
    np_fn = numpy_scorer(spec)
    ref_fn = reference_scorer(spec)

    per_channel = not a.int8_per_tensor
    int8_info = {"weight_type": "QInt8 (symmetric)", "activations": "QUInt8, dynamic per tensor",
                 "per_channel": per_channel, "reduce_range": False, "op_types": ["MatMul"],
                 "MatMulConstBOnly": True}
    sess8 = None
    try:
        qmodel, int8_info["ops"] = ort_int8_model(model, os.path.join(tdir, "tt_model.int8.onnx"), per_channel)
        opt8 = os.path.join(tdir, "tt_model.int8.ort_optimized.onnx")
        sess8 = ort_session(qmodel, opt8)
        int8_info["optimized_ops"] = count_ops(onnx.load(opt8))
        print(f"  onnxruntime int8 ({'per-channel' if per_channel else 'per-tensor'} QInt8 weights) "
              f"graph after ORT_ENABLE_ALL: {int8_info['optimized_ops']}")
    except Exception as e:
        skip("ort_int8", f"quantize_dynamic or its session failed ({why(e)})")

    def ov_maker(precision):
        def make(n, X):
            fn, info = ov_scorer(ov, core, onnx_path, n, D, precision)
            ov_info["exec"].setdefault(precision, {})[str(n)] = info
            return (lambda: fn(X)), info
        return make

    # key -> make(n, X) -> (call, info): call() scores X (the same X every
    # call, as before); set-up (compiling, transposing) is not timed.
    makers = {
        "ort": lambda n, X: ((lambda feed: lambda: sess.run(["score"], feed)[0])({"x": X}), None),
        "ort_int8": lambda n, X: ((lambda feed: lambda: sess8.run(["score"], feed)[0])({"x": X}), None),
        "ov_f32": ov_maker("f32"),
        "ov_bf16": ov_maker("bf16"),
        "numpy": lambda n, X: ((lambda: np_fn(X)), None),
    }
    active = [key for key, _ in PEERS if key not in skipped]

    results, checks, md_parts = {}, {}, []
    hdr = header(k)
    for n in meta["ns"]:
        X, want = xs[n], exps[n]
        ref = ref_fn(X)
        top_ref = set(topk(ref, k)[0].tolist())
        top_want = set(topk(want, k)[0].tolist())

        def accuracy(s):
            ids = set(topk(s, k)[0].tolist())
            return {"max_rel_err_f64": rel_err(s, ref), "topk_overlap_f64": len(ids & top_ref) / k,
                    "max_rel_err_vstore": rel_err(s, want), "topk_overlap_vstore": len(ids & top_want) / k}

        chk = {"reference_max_rel_err_vs_vstore": rel_err(ref, want),
               "peers": {"vstore": {"max_rel_err_f64": rel_err(want, ref),
                                    "topk_overlap_f64": len(top_want & top_ref) / k}}}
        for vn in sorted((vstore.get(n) or {}).get("variants", {})):
            f = os.path.join(tdir, f"tt_expected_{vn}_{n}.npy")
            if os.path.exists(f):
                s_v = np.load(f).astype(np.float64)
                chk["peers"][f"vstore variant: {vn}"] = {
                    "max_rel_err_f64": rel_err(s_v, ref),
                    "topk_overlap_f64": len(set(topk(s_v, k)[0].tolist()) & top_ref) / k}
        if not chk["reference_max_rel_err_vs_vstore"] < MAX_REL_ERR:
            fail(f"n={n}: the float64 reference differs from tt_expected (max rel err "
                 f"{chk['reference_max_rel_err_vs_vstore']:.3g} >= {MAX_REL_ERR}): it does not compute "
                 "the same model")
        calls, s_np = {}, None
        for key in list(active):
            try:
                call, info = makers[key](n, X)
                s = np.array(call(), dtype=np.float32)  # a copy: OpenVINO's output is reused
                if s.shape != (n,) or not np.isfinite(s).all():
                    raise ValueError(f"scores of shape {s.shape}, finite: {bool(np.isfinite(s).all())}")
            except Exception as e:
                skip(key, f"n={n}: {why(e)}")
                active.remove(key)
                continue
            acc = accuracy(s)
            if not acc["max_rel_err_vstore"] < MAX_REL_ERR and key in REQUIRED_MATCH + OPTIONAL_MATCH:
                msg = (f"n={n}: {LABEL[key]} scores differ from tt_expected (max rel err "
                       f"{acc['max_rel_err_vstore']:.3g} >= {MAX_REL_ERR}): the peer does not compute the "
                       "same model")
                if key in REQUIRED_MATCH:
                    fail(msg)
                skip(key, msg)
                active.remove(key)
                continue
            if info and "exec" in info:
                acc["exec"] = info["exec"]
            chk["peers"][key] = acc
            calls[key] = call
            if key == "numpy":
                s_np = s
        checks[n] = chk
        print(f"  n={n}: float64 reference vs tt_expected: max rel err "
              f"{chk['reference_max_rel_err_vs_vstore']:.2e}")
        for key, acc in chk["peers"].items():
            print(f"    {LABEL.get(key, key)}: vs float64 max rel err {acc['max_rel_err_f64']:.2e}, "
                  f"top-{k} overlap {acc['topk_overlap_f64']:.3f}"
                  + (f"; vs tt_expected {acc['max_rel_err_vstore']:.2e}, {acc['topk_overlap_vstore']:.3f}"
                     if "max_rel_err_vstore" in acc else "")
                  + (f"; kernels {acc['exec']}" if n == meta["ns"][0] and "exec" in acc else ""))

        res = {}
        for key, call in calls.items():
            res[key] = timeit(call, a.iters, a.warmup)
            res[key + "_topk"] = timeit(lambda: topk(call(), k), a.iters, a.warmup)
            cw = max(res[key]["cpu_per_wall"] or 0, res[key + "_topk"]["cpu_per_wall"] or 0)
            if cw > 1.25:
                print(f"  note n={n}: {LABEL[key]} used {cw:.2f} CPU-seconds per second while timed "
                      "(more than one thread busy?)", file=sys.stderr)
        if s_np is None:
            s_np = ref.astype(np.float32)
        res["topk"] = timeit(lambda: topk(s_np, k), a.iters, a.warmup)
        results[n] = res
        vst = vstore.get(n)
        flops = fpr * n
        rows = rows_for(res, chk, vst, flops)
        if vst and vst.get("gflops") and vst.get("median_ms"):
            ours = flops / (vst["median_ms"] * 1e-3) / 1e9
            if abs(ours - vst["gflops"]) > 0.01 * ours:
                print(f"  note n={n}: tt_vstore.json gflops {vst['gflops']:.1f} != {ours:.1f} from "
                      f"this script's FLOP count (unsplit model); the table uses the latter",
                      file=sys.stderr)
        res["rows"] = rows
        title = f"n = {n}, k = {k}, {flops / 1e6:.1f} MFLOP per query"
        # Each vstore row against onnxruntime (run + top-k), the goal's
        # comparison (the ratio column is against the first vstore row only).
        ort_ms = res["ort_topk"].get("median_ms") if "ort_topk" in res else None
        vs = [(r["method"].replace("vstore variant: ", "").replace(
            "vstore (ids in, top k out)", "as given"), r["median_ms"])
            for r in rows if r["method"].startswith("vstore") and r["median_ms"]]
        speedups = "onnxruntime fp32 (run + top-k) / vstore: " + ", ".join(
            f"{name} {ort_ms / ms:.2f}x" for name, ms in vs) if ort_ms else ""
        skipped_line = ("skipped: " + "; ".join(f"{LABEL[kk]} ({r})" for kk, r in skipped.items())
                        if skipped else "")
        below = "\n".join(x for x in (speedups, skipped_line) if x)
        print(f"\n{title}\n{text_table(hdr, rows)}\n{below}\n")
        md_parts.append(f"### {title}\n\n" + md_table(hdr, [cells(r) for r in rows])
                        + (f"\n\n{below}" if below else ""))

    peak = None
    if not a.no_peak:
        peak = peak_sgemm()
        print(f"reference: numpy float32 {peak['size']}^3 matmul, 1 thread: {peak['gflops']:.1f} GFLOP/s "
              f"median (best {peak['best_gflops']:.1f})")

    cpu_wall = {LABEL[key]: max(r[kk]["cpu_per_wall"] for r in results.values()
                                for kk in (key, key + "_topk") if kk in r)
                for key, _ in PEERS if any(key in r for r in results.values())}
    notes = [
        f"Model {spec['name']!r} (contract v{spec['format']}): cross {dims['cross']}, upper "
        f"{dims['upper_inputs']} {dims['upper']} (layers as [in, out])"
        + (f", MMoE experts {dims['mmoe']['experts']} gates {dims['mmoe']['gates']}" if "mmoe" in dims else "")
        + f", heads {dims['heads']}, fusion {dims['fusion']}; {fpr} FLOP per candidate "
        "(2 * sum in*out of every dense map, unsplit model; the experts' mixture not counted).",
        "vstore: end to end (candidate ids in, gather + transforms + model + top k out), from tt_vstore.json. "
        "Peers start from the already-gathered, concatenated inputs tt_x_{n}.npy (no id lookup, "
        "no gather, no feature transforms) and the same X every call (warm caches).",
        "ratio = peer median / vstore median (>1: vstore is faster). GFLOP/s = FLOPs / median time.",
        f"top-{k} overlap = |top-{k} rows of the row's scores ∩ top-{k} rows of a float64 numpy "
        f"reference of the same model on the same X| / {k}; max rel err against the same reference "
        "(per row, rows below 1e-3 of the largest |score| measured against that). The vstore row uses "
        "vstore's scores tt_expected.",
        f"All single-threaded; median (and 10th percentile) of {a.iters} calls after {a.warmup} warm-up. "
        "CPU time / wall time while timed (max over n): "
        + ", ".join(f"{name} {v:.2f}" for name, v in cpu_wall.items()) + ".",
        "Versions: " + ", ".join(f"{kk} {v}" for kk, v in versions.items()) + ".",
        "Max relative error vs tt_expected (vstore's scores): " + "; ".join(
            f"n={n}: " + ", ".join(f"{LABEL[kk]} {c['max_rel_err_vstore']:.1e}"
                                  for kk, c in chk["peers"].items() if "max_rel_err_vstore" in c)
            + f", float64 reference {chk['reference_max_rel_err_vs_vstore']:.1e}"
            for n, chk in checks.items()) + ".",
        f"onnxruntime graph after ORT_ENABLE_ALL: {opt_ops}.",
    ]
    if "ort_int8" not in skipped or "optimized_ops" in int8_info:
        notes.append(
            f"onnxruntime int8: quantize_dynamic of the same graph with Gemm written as MatMul + Add; "
            f"weights QInt8 symmetric {'per output column' if per_channel else 'per tensor'}, activations "
            f"uint8 per tensor at run time; after quantization {int8_info.get('ops')}, after "
            f"ORT_ENABLE_ALL {int8_info.get('optimized_ops')}.")
    if ov_info:
        ex = {p: next(iter(v.values()))["exec"] for p, v in ov_info["exec"].items()}
        notes.append(
            f"OpenVINO {ov_info['version']}: the same ONNX file, reshaped to [n, {D}] and compiled per n "
            f"with {ov_config('<precision>')}; CPU OPTIMIZATION_CAPABILITIES "
            f"{ov_info['optimization_capabilities']}; executed kernels (first n): "
            + "; ".join(f"{p}: {e}" for p, e in ex.items()) + ".")
    if skipped:
        notes.append("Skipped: " + "; ".join(f"{LABEL[kk]}: {r}" for kk, r in skipped.items()) + ".")
    if peak:
        notes.append(f"Reference: numpy float32 {peak['size']}^3 matmul, 1 thread: "
                     f"{peak['gflops']:.1f} GFLOP/s median (best {peak['best_gflops']:.1f}).")
    md = (f"## Three-tower scoring ({spec['name']!r}, contract v{spec['format']}): "
          "vstore vs onnxruntime, OpenVINO and numpy\n\n" + "\n\n".join(md_parts)
          + "\n\n" + "\n".join(f"- {x}" for x in notes) + "\n")
    with open(os.path.join(tdir, "tt_peers.md"), "w") as fh:
        fh.write(md)
    with open(os.path.join(tdir, "tt_peers.json"), "w") as fh:
        json.dump({"meta": meta, "model": dims, "flops_per_row": fpr, "versions": versions,
                   "iters": a.iters, "warmup": a.warmup, "threads": 1,
                   "ort_optimized_ops": opt_ops, "ort_int8": int8_info, "openvino": ov_info,
                   "skipped": skipped, "peak_sgemm": peak,
                   "checks": {str(n): c for n, c in checks.items()},
                   "results": {str(n): r for n, r in results.items()},
                   "vstore": {str(n): v for n, v in vstore.items()}}, fh, indent=2)
    print(f"wrote {os.path.join(tdir, 'tt_peers.md')} and tt_peers.json")


if __name__ == "__main__":
    main()
