#!/usr/bin/env python3
"""Copy one safetensors file with some tensors taken from another, by name prefix.

Ships a decoder trained on a frozen encoder (`train_tinyworld --stage vae --vae-decoder-only`) into a model folder
without the rest of that run's export: its VAE file re-measures the latent statistics (`scale.mean`,
`scale.inv_std`) on its own seed's clips, and the folder's DiT was trained with the folder's.
Standard library only.

    tools/graft_tensors.py OUT.safetensors BASE.safetensors DONOR.safetensors --prefix decoder. --prefix conv2.
"""
import argparse
import json
import os
import struct
import sys


def read(path):
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        sys.exit(f"{path}: not a safetensors file (too short)")
    (n,) = struct.unpack("<Q", data[:8])
    if 8 + n > len(data):
        sys.exit(f"{path}: not a safetensors file (header length {n} past the end)")
    header = json.loads(data[8 : 8 + n])
    meta = header.pop("__metadata__", None)
    body = data[8 + n :]
    tensors = {}
    for name, info in header.items():
        a, b = info["data_offsets"]
        tensors[name] = (info["dtype"], info["shape"], body[a:b])
    return tensors, meta


def write(path, tensors, meta):
    header, chunks, off = {}, [], 0
    size = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2}
    # Largest itemsize first, as reel writes them: every tensor stays naturally aligned.
    for name in sorted(tensors, key=lambda n: (-size.get(tensors[n][0], 1), n)):
        dtype, shape, raw = tensors[name]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(raw)]}
        chunks.append(raw)
        off += len(raw)
    if meta is not None:
        header["__metadata__"] = meta
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for c in chunks:
            f.write(c)
    os.replace(path + ".tmp", path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("base")
    ap.add_argument("donor")
    ap.add_argument("--prefix", action="append", required=True, help="tensor-name prefix to take from DONOR")
    a = ap.parse_args()
    base, meta = read(a.base)
    donor, _ = read(a.donor)
    taken = 0
    for name, t in donor.items():
        if not any(name.startswith(p) for p in a.prefix):
            continue
        if name not in base:
            sys.exit(f"{a.donor}: {name} is not in {a.base}")
        if base[name][:2] != t[:2]:
            sys.exit(f"{name}: {t[0]} {t[1]} in {a.donor}, {base[name][0]} {base[name][1]} in {a.base}")
        base[name] = t
        taken += 1
    if taken == 0:
        sys.exit(f"{a.donor}: no tensor starts with {', '.join(a.prefix)}")
    write(a.out, base, meta)
    print(f"{a.out}: {taken} tensors from {a.donor}, {len(base) - taken} from {a.base}")


if __name__ == "__main__":
    main()
