"""An independent reader of the vstore on-disk format, written from
format/FORMAT.md alone (by a reviewer who did not read the Rust sources;
2026-12-07), and kept as a test of that document: python/tests/
test_format_reader.py reads every golden store with it, every checksum
verified, and compares the items with the package's. When the format
changes, FORMAT.md changes, and this reader follows FORMAT.md, not the
code: where the two disagree, the test says so.

Entry points: `list_manifests(store)`, `read_snapshot(store, number, name,
verify=True)` (raises `FormatError` on anything FORMAT.md says a reader
must refuse) and `item(snapshot, id)`."""
import os, re, struct, zlib, json, math
import numpy as np

MAGIC = b"\x89VSTR\r\n\x1a"
KIND_NAMES = {1: "manifest", 2: "columns", 3: "idindex", 4: "deletes", 5: "bundle"}
SUPPORTED = range(1, 7)


class FormatError(Exception):
    pass


def crc32(b):
    return zlib.crc32(b) & 0xFFFFFFFF


def ceil_to(x, n):
    return (x + n - 1) // n * n


# ---------------------------------------------------------------- rkyv layout engine
class T:
    size = 0
    align = 1

    def read(self, buf, pos):
        raise NotImplementedError


class Prim(T):
    def __init__(self, fmt):
        self.fmt = "<" + fmt
        self.size = struct.calcsize(self.fmt)
        self.align = self.size

    def read(self, buf, pos):
        if pos % self.align:
            raise FormatError("misaligned primitive")
        return struct.unpack_from(self.fmt, buf, pos)[0]


U8, U32, U64, F32 = Prim("B"), Prim("I"), Prim("Q"), Prim("f")


class Str(T):
    size, align = 8, 4

    def read(self, buf, pos):
        b0 = buf[pos]
        if b0 & 0xC0 != 0x80:  # inline, padded with 0xff
            raw = bytes(buf[pos:pos + 8])
            n = raw.find(b"\xff")
            n = 8 if n < 0 else n
            return raw[:n].decode("utf-8")
        ln, off = struct.unpack_from("<Ii", buf, pos)
        ln = (ln & 0x3F) | ((ln & ~0xFF) >> 2)
        start = pos + off
        if start < 0 or start + ln > len(buf):
            raise FormatError("string out of range")
        return bytes(buf[start:start + ln]).decode("utf-8")


STR = Str()


class Vec(T):
    size, align = 8, 4

    def __init__(self, elem):
        self.elem = elem

    def read(self, buf, pos):
        off, n = struct.unpack_from("<iI", buf, pos)
        start = pos + off
        stride = ceil_to(self.elem.size, self.elem.align)
        if n and (start < 0 or start + n * stride > len(buf) or start % self.elem.align):
            raise FormatError("vec out of range / misaligned")
        return [self.elem.read(buf, start + i * stride) for i in range(n)]


class Struct(T):
    def __init__(self, name, fields):
        self.name = name
        self.fields = fields
        off = 0
        self.offsets = []
        al = 1
        for fname, ft in fields:
            off = ceil_to(off, ft.align)
            self.offsets.append(off)
            off += ft.size
            al = max(al, ft.align)
        self.align = al
        self.size = ceil_to(off, al)

    def read(self, buf, pos):
        d = {"_type": self.name}
        for (fname, ft), o in zip(self.fields, self.offsets):
            d[fname] = ft.read(buf, pos + o)
        return d


class Enum(T):
    def __init__(self, name, variants):
        # variants: list of (vname, [fields])
        self.name = name
        self.variants = []
        size = 1
        al = 1
        for vname, fields in variants:
            s = Struct(vname, [("__tag", U8)] + fields)
            self.variants.append((vname, s))
            size = max(size, s.size)
            al = max(al, s.align)
        self.align = al
        self.size = ceil_to(size, al)

    def read(self, buf, pos):
        tag = buf[pos]
        if tag >= len(self.variants):
            raise FormatError(f"bad enum tag {tag} for {self.name}")
        vname, s = self.variants[tag]
        d = s.read(buf, pos)
        del d["__tag"]
        d["_type"] = self.name
        d["_variant"] = vname
        return d


class Opt(T):
    def __init__(self, inner):
        self.e = Enum("Option", [("None", []), ("Some", [("v", inner)])])
        self.size, self.align = self.e.size, self.e.align

    def read(self, buf, pos):
        d = self.e.read(buf, pos)
        return d["v"] if d["_variant"] == "Some" else None


Extent = Struct("Extent", [("offset", U64), ("len", U64)])
FileRef = Struct("FileRef", [("name", STR), ("len", U64), ("meta_crc", U32)])
ColumnKind = Enum("ColumnKind", [("Categorical", [("default", U32)]), ("Numeric", [("default", F32)])])
ColumnDef = Struct("ColumnDef", [("name", STR), ("kind", ColumnKind)])
EmbeddingDef = Struct("EmbeddingDef", [("space", STR), ("version", STR), ("dim", U32), ("dtype", U8)])
DTYPES = ["f32", "f16", "bf16", "i8"]
Schema = Struct("Schema", [("profile", Vec(ColumnDef)), ("stats", Vec(ColumnDef)), ("embeddings", Vec(EmbeddingDef))])
EmbeddingRef = Struct("EmbeddingRef", [("key", STR), ("file", FileRef)])
SegmentMeta = Struct("SegmentMeta", [("id", U64), ("rows", U64), ("id_index", FileRef), ("profile", FileRef),
                                     ("stats", FileRef), ("embeddings", Vec(EmbeddingRef)), ("deletes", Opt(FileRef))])
BundleRef = Struct("BundleRef", [("key", STR), ("files", Vec(FileRef))])
KeyValue = Struct("KeyValue", [("key", STR), ("value", STR)])
ManifestMeta = Struct("ManifestMeta", [("snapshot", U64), ("parent", Opt(U64)), ("created_unix_ms", U64),
                                       ("schema", Schema), ("segments", Vec(SegmentMeta)), ("bundles", Vec(BundleRef)),
                                       ("user_meta", Vec(KeyValue)), ("next_segment_id", U64)])
Group = Enum("Group", [("Profile", []), ("Stats", []), ("Embedding", [("def", EmbeddingDef)])])
ColumnBlock = Struct("ColumnBlock", [("name", STR), ("values", Extent), ("missing", Opt(Extent)), ("missing_count", U64)])
VectorBlock5 = Struct("VectorBlock", [("stride", U32), ("rows", Extent), ("computed", Opt(Extent)), ("computed_count", U64)])
VectorBlock1 = Struct("VectorBlock", [("stride", U32), ("rows", Extent)])
IdIndexMeta = Struct("IdIndexMeta", [("segment", U64), ("rows", U64), ("ids", Extent), ("table", Extent), ("slots", U64),
                                     ("max_probe", U32), ("bloom", Extent), ("bloom_blocks", U64)])
DeletesMeta = Struct("DeletesMeta", [("segment", U64), ("rows", U64), ("bitmap", Extent), ("deleted", U64)])
BundleMeta2 = Struct("BundleMeta", [("key", STR), ("json", Extent), ("weights", Extent)])
BundleMeta6 = Struct("BundleMeta", [("key", STR), ("json", Extent), ("weights", Extent), ("precision", U8),
                                    ("converted", Opt(Extent))])


def filemeta_type(version):
    vb = VectorBlock5 if version >= 5 else VectorBlock1
    cols = Struct("ColumnsMeta", [("segment", U64), ("rows", U64), ("group", Group), ("columns", Vec(ColumnBlock)),
                                  ("vectors", Opt(vb))])
    bm = BundleMeta6 if version >= 6 else BundleMeta2
    variants = [("Manifest", [("m", ManifestMeta)]), ("Columns", [("m", cols)]), ("IdIndex", [("m", IdIndexMeta)]),
                ("Deletes", [("m", DeletesMeta)])]
    if version >= 2:
        variants.append(("Bundle", [("m", bm)]))
    body = Enum("Body", variants)
    return Struct("FileMeta", [("chunk_size", U32), ("data_crcs", Vec(U32)), ("body", body)])


# ---------------------------------------------------------------- container
class VFile:
    def __init__(self, path, expect_kind=None):
        self.path = path
        self.name = os.path.basename(path)
        import mmap
        with open(path, "rb") as f:
            self.data = memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
        d = self.data
        L = len(d)
        self.notes = []
        if L < 104:
            raise FormatError(f"{self.name}: too short")
        if bytes(d[:8]) != MAGIC or bytes(d[L - 8:]) != MAGIC:
            raise FormatError(f"{self.name}: magic")
        hver, hkind = struct.unpack_from("<II", d, 8)
        if any(d[16:64]):
            raise FormatError(f"{self.name}: header reserved not zero")
        fo = L - 40
        meta_off, meta_len, meta_crc, fkind, fver, fcrc = struct.unpack_from("<QQIIII", d, fo)
        if crc32(bytes(d[:64]) + bytes(d[fo:fo + 28])) != fcrc:
            raise FormatError(f"{self.name}: footer crc")
        if (hver, hkind) != (fver, fkind):
            raise FormatError(f"{self.name}: header/footer disagree")
        if hver not in SUPPORTED:
            raise FormatError(f"{self.name}: unsupported format version {hver}")
        if expect_kind is not None and hkind != expect_kind:
            raise FormatError(f"{self.name}: kind {hkind}, expected {expect_kind}")
        if meta_off < 64 or meta_off % 64 or meta_len == 0:
            raise FormatError(f"{self.name}: meta offset/len")
        if ceil_to(meta_off + meta_len, 8) != L - 40:
            raise FormatError(f"{self.name}: length rule")
        if any(d[meta_off + meta_len:fo]):
            raise FormatError(f"{self.name}: meta pad nonzero")
        mb = d[meta_off:meta_off + meta_len]
        if crc32(mb) != meta_crc:
            raise FormatError(f"{self.name}: meta crc")
        self.version, self.kind = hver, hkind
        self.meta_offset, self.meta_len, self.meta_crc = meta_off, meta_len, meta_crc
        ft = filemeta_type(hver)
        root = meta_len - ft.size
        self.root_pos = root
        fm = ft.read(mb, root)
        self.chunk_size = fm["chunk_size"]
        self.data_crcs = fm["data_crcs"]
        body = fm["body"]
        want = ["Manifest", "Columns", "IdIndex", "Deletes", "Bundle"][hkind - 1]
        if body["_variant"] != want:
            raise FormatError(f"{self.name}: body {body['_variant']} for kind {hkind}")
        self.body = body["m"]
        if hver == 1 and self.chunk_size != 1 << 20:
            raise FormatError(f"{self.name}: chunk size")
        if self.chunk_size == 0:
            raise FormatError(f"{self.name}: zero chunk size")
        nreg = meta_off - 64
        if len(self.data_crcs) != -(-nreg // self.chunk_size):
            raise FormatError(f"{self.name}: crc count {len(self.data_crcs)}")

    def verify_data(self):
        if getattr(self, "_verified", False):
            return
        self._verified = True
        cs = self.chunk_size
        for i, c in enumerate(self.data_crcs):
            a = 64 + i * cs
            b = min(a + cs, self.meta_offset)
            if crc32(self.data[a:b]) != c:
                raise FormatError(f"{self.name}: data chunk {i} crc")

    def check_layout(self, extents):
        """extents: list of (field, Extent, expected_len). Check the fixed block layout."""
        pos = 64
        for field, ext, want in extents:
            if ext["offset"] != pos:
                raise FormatError(f"{self.name}: {field} at {ext['offset']}, expected {pos}")
            if want is not None and ext["len"] != want:
                raise FormatError(f"{self.name}: {field} len {ext['len']}, expected {want}")
            pos = ceil_to(pos + ext["len"], 64)
        if self.meta_offset != pos:
            raise FormatError(f"{self.name}: meta_offset {self.meta_offset}, expected {pos}")
        # padding between blocks must be zero
        end = 64
        for field, ext, want in extents:
            if any(self.data[end:ext["offset"]]):
                raise FormatError(f"{self.name}: nonzero padding before {field}")
            end = ext["offset"] + ext["len"]
        if any(self.data[end:self.meta_offset]):
            raise FormatError(f"{self.name}: nonzero padding before metadata")

    def block(self, ext):
        return self.data[ext["offset"]:ext["offset"] + ext["len"]]


# ---------------------------------------------------------------- helpers
def splitmix(x):
    M = (1 << 64) - 1
    z = (x + 0x9E3779B97F4A7C15) & M
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
    return z ^ (z >> 31)


def splitmix_np(x):
    x = x.astype(np.uint64)
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def mulhi_np(a, b):
    """(a*b)>>64 for uint64 array a and python int b (< 2^64)."""
    a = a.astype(np.uint64)
    M32 = np.uint64(0xFFFFFFFF)
    a_lo, a_hi = a & M32, a >> np.uint64(32)
    b_lo, b_hi = np.uint64(b & 0xFFFFFFFF), np.uint64(b >> 32)
    with np.errstate(over="ignore"):
        ll = a_lo * b_lo
        lh = a_lo * b_hi
        hl = a_hi * b_lo
        hh = a_hi * b_hi
        mid = (ll >> np.uint64(32)) + (lh & M32) + (hl & M32)
        return hh + (lh >> np.uint64(32)) + (hl >> np.uint64(32)) + (mid >> np.uint64(32))


def bitmap_bits(b, rows):
    words = np.frombuffer(b, dtype="<u8")
    if len(words) != -(-rows // 64):
        raise FormatError("bitmap size")
    bits = np.unpackbits(words.view(np.uint8), bitorder="little")
    if bits[rows:].any():
        raise FormatError("bitmap bits past rows set")
    return bits[:rows].astype(bool)


def bf16_to_f32(u16):
    return (u16.astype(np.uint32) << np.uint32(16)).view(np.float32)


ROW_BYTES = {"f32": lambda d: 4 * d, "f16": lambda d: 2 * d, "bf16": lambda d: 2 * d, "i8": lambda d: d + 4}


def decode_vectors(blk, rows, dim, dtype, stride):
    a = np.frombuffer(bytes(blk), dtype=np.uint8).reshape(rows, stride)
    rb = ROW_BYTES[dtype](dim)
    if a[:, rb:].any():
        raise FormatError("row padding nonzero")
    if dtype == "f32":
        return a[:, :rb].copy().view("<f4").astype(np.float32)
    if dtype == "f16":
        return a[:, :rb].copy().view("<f2").astype(np.float32)
    if dtype == "bf16":
        return bf16_to_f32(a[:, :rb].copy().view("<u2"))
    q = a[:, :dim].copy().view(np.int8).astype(np.float32)
    scale = a[:, dim:dim + 4].copy().view("<f4").astype(np.float32)
    return q * scale


# ---------------------------------------------------------------- file kinds
_PCACHE = {}


def cached(fn):
    def w(store, fref, *a):
        k = (fn.__name__, os.path.realpath(os.path.join(store, fref["name"])), fref["len"], fref["meta_crc"], a[:1])
        if k not in _PCACHE:
            _PCACHE[k] = fn(store, fref, *a)
        return _PCACHE[k]
    return w


@cached
def read_columns(store, fref, seg_rows, group, schema, expect_vectors_def=None):
    vf = open_ref(store, fref, 2)
    m = vf.body
    if m["rows"] != seg_rows:
        raise FormatError(f"{vf.name}: rows {m['rows']} != {seg_rows}")
    g = m["group"]["_variant"]
    if g != group:
        raise FormatError(f"{vf.name}: group {g} != {group}")
    rows = m["rows"]
    exts = []
    out = {"file": vf, "segment": m["segment"]}
    if group in ("Profile", "Stats"):
        defs = schema["profile" if group == "Profile" else "stats"]
        if m["vectors"] is not None:
            raise FormatError("vectors in a column group")
        if [c["name"] for c in m["columns"]] != [d["name"] for d in defs]:
            raise FormatError(f"{vf.name}: column names")
        cols = {}
        for c, d in zip(m["columns"], defs):
            exts.append((c["name"] + ".values", c["values"], rows * 4))
            if (c["missing"] is not None) != (c["missing_count"] > 0):
                raise FormatError(f"{vf.name}: missing present iff count>0")
            if c["missing"] is not None:
                exts.append((c["name"] + ".missing", c["missing"], -(-rows // 64) * 8))
        vf.check_layout(exts)
        for c, d in zip(m["columns"], defs):
            raw = vf.block(c["values"])
            kind = d["kind"]["_variant"]
            vals = np.frombuffer(raw, "<u4" if kind == "Categorical" else "<f4").copy()
            miss = np.zeros(rows, bool)
            if c["missing"] is not None:
                miss = bitmap_bits(vf.block(c["missing"]), rows)
                if miss.sum() != c["missing_count"]:
                    raise FormatError("missing_count")
                dflt = d["kind"]["default"]
                bad = vals[miss] != (np.float32(dflt) if kind == "Numeric" else dflt)
                if bad.any():
                    out.setdefault("notes", []).append(f"{c['name']}: missing rows not holding default")
            if kind == "Numeric" and not np.isfinite(vals).all():
                raise FormatError("non-finite numeric")
            cols[c["name"]] = (vals, miss, kind)
        out["cols"] = cols
    else:
        ed = m["group"]["def"]
        if m["columns"]:
            raise FormatError("columns in embedding group")
        if expect_vectors_def is not None:
            for k in ("space", "version", "dim", "dtype"):
                if ed[k] != expect_vectors_def[k]:
                    raise FormatError(f"{vf.name}: embedding def {k} {ed[k]} != {expect_vectors_def[k]}")
        vb = m["vectors"]
        dt = DTYPES[ed["dtype"]]
        rb = ROW_BYTES[dt](ed["dim"])
        stride = ceil_to(rb, 16)
        if vb["stride"] != stride:
            raise FormatError(f"{vf.name}: stride {vb['stride']} != {stride}")
        exts.append(("vectors.rows", vb["rows"], rows * stride))
        comp = np.zeros(rows, bool)
        if "computed" in vb:
            if (vb["computed"] is not None) != (vb["computed_count"] > 0):
                raise FormatError("computed present iff count>0")
            if vb["computed"] is not None:
                exts.append(("vectors.computed", vb["computed"], -(-rows // 64) * 8))
        vf.check_layout(exts)
        if vb.get("computed") is not None:
            comp = bitmap_bits(vf.block(vb["computed"]), rows)
            if comp.sum() != vb["computed_count"]:
                raise FormatError("computed_count")
        blk = vf.block(vb["rows"])
        out["vecs_lazy"] = lambda r0=0, r1=rows: decode_vectors(blk[r0 * stride:r1 * stride], r1 - r0, ed["dim"], dt, stride)
        out["vecs"] = out["vecs_lazy"]() if rows * stride < 64 << 20 else None
        out["computed"] = comp
        out["def"] = ed
    return out


@cached
def read_idindex(store, fref, seg_rows):
    vf = open_ref(store, fref, 3)
    m = vf.body
    rows = m["rows"]
    if rows != seg_rows:
        raise FormatError("idindex rows")
    if vf.version >= 3:
        w = 4
        slots = 4 * max(1, math.ceil(rows / 0.5 / 4))
    else:
        w = 1
        slots = math.ceil(rows / 0.7) + 1
    if m["slots"] != slots:
        raise FormatError(f"{vf.name}: slots {m['slots']} != {slots}")
    bb = max(1, math.ceil(rows * 10 / 512))
    if m["bloom_blocks"] != bb:
        raise FormatError(f"{vf.name}: bloom_blocks {m['bloom_blocks']} != {bb}")
    vf.check_layout([("ids", m["ids"], rows * 8), ("table", m["table"], slots * 16), ("bloom", m["bloom"], bb * 64)])
    ids = np.frombuffer(vf.block(m["ids"]), "<u8").copy()
    table = np.frombuffer(vf.block(m["table"]), "<u8").reshape(slots, 2).copy()
    # table checks
    occ = table[:, 1] != 0
    if occ.sum() != rows:
        raise FormatError("table entries != rows")
    if (table[~occ, 0] != 0).any():
        raise FormatError("empty slot with nonzero id")
    if not (~occ).any():
        raise FormatError("no empty slot")
    rp = table[occ, 1].astype(np.int64) - 1
    if (rp >= rows).any() or (ids[rp] != table[occ, 0]).any():
        raise FormatError("table slot maps wrong row")
    h = splitmix_np(ids)
    home = (mulhi_np(h, slots // w) * np.uint64(w)).astype(np.int64)
    occ_idx = np.nonzero(occ)[0]
    final = np.empty(rows, np.int64)
    final[rp] = occ_idx
    dist = (final - home) % slots
    if dist.max(initial=0) != m["max_probe"]:
        raise FormatError(f"{vf.name}: max_probe {m['max_probe']} != {dist.max(initial=0)}")
    # reproduce insertion exactly (row order, linear probing)
    sim = np.zeros(slots, np.int64) - 1
    for r in range(rows) if rows <= 300000 else []:
        s = int(home[r])
        while sim[s] >= 0:
            s = s + 1 if s + 1 < slots else 0
        sim[s] = r
    if rows <= 300000:
        exp = np.zeros((slots, 2), np.uint64)
        o = sim >= 0
        exp[o, 0] = ids[sim[o]]
        exp[o, 1] = (sim[o] + 1).astype(np.uint64)
        if not np.array_equal(exp, table):
            raise FormatError(f"{vf.name}: table differs from row-order linear-probe insertion")
    # bloom
    bloom = np.frombuffer(vf.block(m["bloom"]), "<u8").reshape(bb, 8)
    blk = mulhi_np(h, bb).astype(np.int64)
    with np.errstate(over="ignore"):
        g = splitmix_np(h ^ np.uint64(0x6A09E667F3BCC909))
    for i in range(7):
        b = ((g >> np.uint64(9 * i)) & np.uint64(511)).astype(np.int64)
        word = bloom[blk, b // 64]
        if ((word >> (b % 64).astype(np.uint64)) & np.uint64(1) == 0).any():
            raise FormatError("bloom bit missing")
    return {"file": vf, "ids": ids, "w": w, "segment": m["segment"], "max_probe": m["max_probe"], "table": table,
            "slots": slots}


def lookup(ix, idv):
    h = splitmix(int(idv))
    slots, w = ix["slots"], ix["w"]
    s = w * ((h * (slots // w)) >> 64)
    for _ in range(ix["max_probe"] + 1):
        i, rp = int(ix["table"][s, 0]), int(ix["table"][s, 1])
        if rp == 0:
            return None
        if i == idv and rp - 1 < len(ix["ids"]) and ix["ids"][rp - 1] == idv:
            return rp - 1
        s = s + 1 if s + 1 < slots else 0
    return None


@cached
def read_deletes(store, fref, seg_rows):
    vf = open_ref(store, fref, 4)
    m = vf.body
    if m["rows"] != seg_rows:
        raise FormatError("deletes rows")
    vf.check_layout([("bitmap", m["bitmap"], -(-seg_rows // 64) * 8)])
    bits = bitmap_bits(vf.block(m["bitmap"]), seg_rows)
    if bits.sum() != m["deleted"]:
        raise FormatError("deleted count")
    return {"file": vf, "deleted": bits, "segment": m["segment"]}


def parse_safetensors(b):
    n = struct.unpack_from("<Q", b, 0)[0]
    hdr = json.loads(bytes(b[8:8 + n]))
    base = 8 + n
    out = {}
    for k, v in hdr.items():
        if k == "__metadata__":
            continue
        a, e = v["data_offsets"]
        raw = b[base + a:base + e]
        dt = v["dtype"]
        if dt == "F32":
            arr = np.frombuffer(raw, "<f4")
        elif dt == "BF16":
            arr = bf16_to_f32(np.frombuffer(raw, "<u2"))
        elif dt == "I8":
            arr = np.frombuffer(raw, np.int8)
        elif dt == "F16":
            arr = np.frombuffer(raw, "<f2")
        else:
            raise FormatError("safetensors dtype " + dt)
        out[k] = (dt, tuple(v["shape"]), arr.reshape(v["shape"]))
    return out


@cached
def read_bundle(store, fref):
    vf = open_ref(store, fref, 5)
    m = vf.body
    exts = [("json", m["json"], None), ("weights", m["weights"], None)]
    prec = m.get("precision", 0)
    if prec not in (0, 1, 2):
        raise FormatError("precision")
    conv = m.get("converted")
    if (prec == 0) != (conv is None):
        raise FormatError("converted iff precision != f32")
    if conv is not None:
        exts.append(("converted", conv, None))
    vf.check_layout(exts)
    vf.verify_data()
    mj = json.loads(bytes(vf.block(m["json"])))
    w = parse_safetensors(bytes(vf.block(m["weights"])))
    out = {"file": vf, "key": m["key"], "json": mj, "weights": w, "precision": ["f32", "bf16", "int8"][prec]}
    if conv is not None:
        c = parse_safetensors(bytes(vf.block(conv)))
        out["converted"] = c
        notes = []
        for k, (dt, shp, arr) in c.items():
            if k.endswith("#scale"):
                continue
            if k not in w:
                raise FormatError("converted tensor not in weights: " + k)
            if shp != w[k][1]:
                raise FormatError("shape differs " + k)
            src = w[k][2].astype(np.float32)
            if prec == 1:
                if dt != "BF16":
                    raise FormatError("dtype")
                u = src.view(np.uint32).astype(np.uint64)
                r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
                if not np.array_equal(bf16_to_f32(r), arr):
                    notes.append(f"{k}: bf16 conversion not RNE of weights")
            else:
                if dt != "I8":
                    raise FormatError("dtype")
                sdt, sshp, s = c[k + "#scale"]
                if sdt != "F32" or sshp != (shp[0],):
                    raise FormatError("scale shape")
                s_exp = (np.abs(src).max(axis=1) / np.float32(127)).astype(np.float32)
                if not np.array_equal(s_exp, s):
                    notes.append(f"{k}: scale != max|w|/127 (max rel diff {np.max(np.abs(s_exp - s) / np.maximum(s_exp, 1e-30)):.3g})")
                with np.errstate(divide="ignore", invalid="ignore"):
                    q = np.where(s[:, None] > 0, np.rint(src / s[:, None]), 0)
                q = np.clip(q, -127, 127).astype(np.int8)
                if not np.array_equal(q, arr):
                    notes.append(f"{k}: int8 q differs in {(q != arr).sum()} of {q.size}")
        for k in c:
            if k.endswith("#scale") and k[:-6] not in c:
                raise FormatError("orphan scale")
        out["conv_notes"] = notes
        out["converted_names"] = sorted(k for k in c if not k.endswith("#scale"))
    return out


# ---------------------------------------------------------------- store
MAN_RE = re.compile(r"^MANIFEST-(\d{20})$")
BAD_NAME_CHARS = ("/", "\\", "\0")


_CACHE = {}


def open_ref(store, fref, kind):
    name = fref["name"]
    if any(c in name for c in BAD_NAME_CHARS) or name in (".", ".."):
        raise FormatError("bad file name " + repr(name))
    p = os.path.join(store, name)
    if os.path.islink(p) or not os.path.isfile(p):
        raise FormatError("not a regular file: " + name)
    key = (os.path.realpath(p), kind)
    if key not in _CACHE:
        _CACHE[key] = VFile(p, kind)
    vf = _CACHE[key]
    if len(vf.data) != fref["len"] or vf.meta_crc != fref["meta_crc"]:
        raise FormatError(f"{name}: FileRef mismatch (len {len(vf.data)} vs {fref['len']}, crc)")
    return vf


def list_manifests(store):
    out = []
    for n in os.listdir(store):
        m = MAN_RE.match(n)
        if m:
            out.append((int(m.group(1)), n))
    return sorted(out)


def read_snapshot(store, num, name, verify=True):
    vf = VFile(os.path.join(store, name), 1)
    m = vf.body
    if vf.meta_offset != 64 or vf.data_crcs:
        raise FormatError("manifest data region not empty")
    if m["snapshot"] != num:
        raise FormatError("snapshot number != name")
    schema = m["schema"]
    keys = [e["space"] + "@" + e["version"] for e in schema["embeddings"]]
    if len(set(keys)) != len(keys):
        raise FormatError("dup embedding keys")
    um = [kv["key"] for kv in m["user_meta"]]
    if um != sorted(set(um)):
        raise FormatError("user_meta not strictly increasing")
    segids = [s["id"] for s in m["segments"]]
    if len(set(segids)) != len(segids) or any(i >= m["next_segment_id"] for i in segids):
        raise FormatError("segment ids")
    bkeys = [b["key"] for b in m["bundles"]]
    if vf.version == 1 and bkeys:
        raise FormatError("v1 manifest with bundles")
    if [k.encode() for k in bkeys] != sorted(set(k.encode() for k in bkeys)):
        raise FormatError("bundle keys not strictly increasing")
    if vf.version in (2, 3) and any("#" in k for k in bkeys):
        raise FormatError("# in v2/3 bundle key")
    snap = {"manifest": vf, "meta": m, "schema": schema, "emb_keys": keys, "segments": [], "bundles": {},
            "file_versions": {vf.name: vf.version}, "notes": []}
    for s in m["segments"]:
        rows = s["rows"]
        seg = {"id": s["id"], "rows": rows}
        ix = read_idindex(store, s["id_index"], rows)
        pr = read_columns(store, s["profile"], rows, "Profile", schema)
        st = read_columns(store, s["stats"], rows, "Stats", schema)
        ekeys = [e["key"] for e in s["embeddings"]]
        if ekeys != keys:
            snap["notes"].append(f"segment {s['id']} embedding keys {ekeys} vs schema {keys}")
        embs = {}
        edefs = dict(zip(keys, schema["embeddings"]))
        for e in s["embeddings"]:
            embs[e["key"]] = read_columns(store, e["file"], rows, "Embedding", schema, edefs[e["key"]])
        dels = read_deletes(store, s["deletes"], rows) if s["deletes"] is not None else None
        for part in [ix, pr, st, dels] + list(embs.values()):
            if part is None:
                continue
            if part["segment"] != s["id"]:
                snap["notes"].append(f"{part['file'].name}: segment field {part['segment']} != manifest segment id {s['id']}")
            snap["file_versions"][part["file"].name] = part["file"].version
            if verify:
                part["file"].verify_data()
        seg.update(ix=ix, profile=pr, stats=st, embs=embs, dels=dels)
        snap["segments"].append(seg)
    for b in m["bundles"]:
        files = b["files"]
        bd = read_bundle(store, files[0])
        snap["file_versions"][bd["file"].name] = bd["file"].version
        if bd["key"] != b["key"]:
            raise FormatError("bundle key mismatch")
        pre = []
        if len(files) > 1:
            if len(files) - 1 != len(m["segments"]):
                raise FormatError("precomputed files count")
            space, rest = b["key"].split("@", 1)
            version, _, name = rest.partition("#")
            pv = f"{version}.upper0" if not name else f"{version}.{name}.upper0"
            for f, seg in zip(files[1:], snap["segments"]):
                pc = read_columns(store, f, seg["rows"], "Embedding", schema)
                d = pc["def"]
                if d["space"] != space or d["version"] != pv:
                    snap["notes"].append(f"{f['name']}: precomputed def {d['space']}@{d['version']} != {space}@{pv}")
                if pc["segment"] != seg["id"]:
                    snap["notes"].append(f"{f['name']}: segment field mismatch")
                if pc["computed"].any():
                    snap["notes"].append(f"{f['name']}: precomputed file with computed rows")
                if verify:
                    pc["file"].verify_data()
                snap["file_versions"][pc["file"].name] = pc["file"].version
                pre.append(pc)
        bd["pre"] = pre
        snap["bundles"][b["key"]] = bd
    # live items
    live = {}
    for si, seg in enumerate(snap["segments"]):
        dl = seg["dels"]["deleted"] if seg["dels"] is not None else np.zeros(seg["rows"], bool)
        for r in np.nonzero(~dl)[0]:
            i = int(seg["ix"]["ids"][r])
            if i in live:
                snap["notes"].append(f"id {i} live twice")
            live[i] = (si, int(r))
    snap["live"] = live
    return snap


def item(snap, idv):
    si, r = snap["live"][idv]
    seg = snap["segments"][si]
    out = {"segment": seg["id"], "row": r, "columns": {}, "embeddings": {}}
    for grp in ("profile", "stats"):
        for name, (vals, miss, kind) in seg[grp]["cols"].items():
            v = vals[r]
            out["columns"][(grp, name)] = (int(v) if kind == "Categorical" else float(v), bool(miss[r]))
    for k, e in seg["embs"].items():
        out["embeddings"][k] = (e["vecs"][r] if e["vecs"] is not None else e["vecs_lazy"](r, r + 1)[0], bool(e["computed"][r]))
    return out
