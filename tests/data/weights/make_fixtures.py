#!/usr/bin/env python3
"""Writes the small torch.save-style fixtures used by tests/test_torch_pickle.cpp and
tests/test_checkpoint.cpp, without torch: a stand-in `torch` module makes pickle emit the same
GLOBAL / BINPERSID opcodes as torch.save (protocol 2), and the zips are written by hand or by
zipfile. Run from this folder: python3 make_fixtures.py. Values are documented in README.md."""
import collections
import io
import pickle
import struct
import sys
import types
import zipfile
import zlib

# ---- a fake torch whose objects pickle like the real ones --------------------------------------
torch = types.ModuleType("torch")
torch_utils = types.ModuleType("torch._utils")
sys.modules["torch"] = torch
sys.modules["torch._utils"] = torch_utils


def _global(module, fn_name, obj):
    obj.__module__ = module.__name__
    obj.__qualname__ = fn_name
    obj.__name__ = fn_name
    setattr(module, fn_name, obj)
    return obj


FloatStorage = _global(torch, "FloatStorage", type("FloatStorage", (), {}))
LongStorage = _global(torch, "LongStorage", type("LongStorage", (), {}))
rebuild_tensor_v2 = _global(torch_utils, "_rebuild_tensor_v2", lambda *a: None)
rebuild_parameter = _global(torch_utils, "_rebuild_parameter", lambda *a: None)


class Storage:
    def __init__(self, key, cls, fmt, values):
        self.key, self.cls, self.values = key, cls, values
        self.data = struct.pack("<%d%s" % (len(values), fmt), *values)


class Tensor:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def __reduce__(self):
        return (rebuild_tensor_v2,
                (self.storage, self.offset, self.size, self.stride, False, collections.OrderedDict()))


class Parameter:
    def __init__(self, t):
        self.t = t

    def __reduce__(self):
        return (rebuild_parameter, (self.t, True, collections.OrderedDict()))


class TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", obj.cls, obj.key, "cpu", len(obj.values))
        return None


def dumps(obj):
    buf = io.BytesIO()
    TorchPickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def storages_of(obj, out):
    if isinstance(obj, Tensor):
        out[obj.storage.key] = obj.storage
    elif isinstance(obj, Parameter):
        storages_of(obj.t, out)
    elif isinstance(obj, dict):
        for v in obj.values():
            storages_of(v, out)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            storages_of(v, out)
    return out


def entries_for(name, pkl, storages):
    entries = [(name + "/data.pkl", pkl)]
    for key, s in sorted(storages.items()):
        entries.append((name + "/data/" + key, s.data))
    entries.append((name + "/version", b"3\n"))
    return entries


def write_zipfile(path, entries, method=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w") as z:
        for n, data in entries:
            info = zipfile.ZipInfo(n, date_time=(2020, 1, 1, 0, 0, 0))  # fixed, so reruns give the same bytes
            info.compress_type = method
            z.writestr(info, data)


def write_zip64(path, entries):
    """Stored zip whose central directory and end record use the ZIP64 forms (as torch.save does
    for files over 4 GB): sizes and offsets saturated to 0xFFFFFFFF, real values in extra 0x0001."""
    out = bytearray()
    central = bytearray()
    for n, data in entries:
        name = n.encode()
        crc = zlib.crc32(data)
        local = len(out)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, 0, 0, 0, crc, len(data), len(data), len(name), 0)
        out += name + data
        extra = struct.pack("<HHQQQ", 0x0001, 24, len(data), len(data), local)
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 0, 0, 0, crc, 0xFFFFFFFF,
                               0xFFFFFFFF, len(name), len(extra), 0, 0, 0, 0, 0xFFFFFFFF)
        central += name + extra
    cd_offset = len(out)
    out += central
    end64 = len(out)
    out += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, len(entries), len(entries), len(central),
                       cd_offset)
    out += struct.pack("<IIQI", 0x07064B50, 0, end64, 1)
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    with open(path, "wb") as f:
        f.write(bytes(out))


def save(path, obj, writer=write_zipfile, **kw):
    name = path.rsplit(".", 1)[0]
    writer(path, entries_for(name, dumps(obj), storages_of(obj, {})), **kw)


# only_generator.pt: a training checkpoint with just "generator" (no EMA), wrapper-prefixed names,
# a Parameter, and non-tensor leaves. zipfile doesn't align entries, so storages are misaligned.
s0 = Storage("0", FloatStorage, "f", [0.5, -1.25, 2.0, 3.5, 4.0, -0.75])
s1 = Storage("1", LongStorage, "q", [7, -3, 11])
gen = collections.OrderedDict()
gen["model.patch_embedding.bias"] = Tensor(s0, 0, [4], [1])
gen["model._orig_mod.head._checkpoint_wrapped_module.weight"] = Parameter(Tensor(s0, 2, [2, 2], [1, 2]))
gen["model.steps"] = Tensor(s1, 0, [3], [1])
save("only_generator.pt", {"generator": gen, "step": 1200, "config": {"lr": 0.5, "name": "dmd"}})

# nested_lists.pt: a plain dict with a list of tensors and a tuple (names "layers/0", ...).
s2 = Storage("0", FloatStorage, "f", [1.0, 2.0, 3.0, 4.0])
save("nested_lists.pt", {"layers": [Tensor(s2, 0, [2], [1]), Tensor(s2, 2, [2], [1])],
                         "pair": (Tensor(s2, 3, [1], [1]), 5)})

# zip64.pt: state dict in a ZIP64 archive.
s3 = Storage("0", FloatStorage, "f", [1.5, 2.5, -3.5])
save("zip64.pt", collections.OrderedDict([("w", Tensor(s3, 0, [3], [1]))]), writer=write_zip64)

# deflated.pt: same, compressed (torch.save never does this): must be refused clearly.
save("deflated.pt", collections.OrderedDict([("w", Tensor(s3, 0, [3], [1]))]), method=zipfile.ZIP_DEFLATED)

# view_out_of_bounds.pt: a [2, 3] view at offset 1 of a 6-element storage (needs 7 elements).
s4 = Storage("0", FloatStorage, "f", [0.0] * 6)
save("view_out_of_bounds.pt", {"w": Tensor(s4, 1, [2, 3], [3, 1])})

# Hand-written pickles in otherwise valid archives.
def raw(path, pkl):
    name = path.rsplit(".", 1)[0]
    write_zipfile(path, [(name + "/data.pkl", pkl), (name + "/version", b"3\n")])


# STACK_GLOBAL (protocol 4) of builtins.eval: refused by name.
raw("stack_global_eval.pt", b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93\x8c\x061+1\x85R.")
# BINUNICODE claiming 4 GB: must fail as truncated without allocating.
raw("huge_string.pt", b"\x80\x02X\xf0\xff\xff\xffabc.")
# An opcode torch.save never writes (INST).
raw("bad_opcode.pt", b"\x80\x02ios\nsystem\n.")
# A list of itself: must fail on depth, not recurse forever.
raw("cyclic.pt", b"\x80\x02]q\x00h\x00a.")
# [x, x] nested 40 times through the memo: 2^40 leaves from 200 bytes; must fail fast.
bomb = b"\x80\x02K\x01q\x00"
for i in range(40):
    bomb += b"(h\x00h\x00lq\x00"
raw("memo_bomb.pt", bomb + b".")
