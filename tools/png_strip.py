#!/usr/bin/env python3
"""Tile frames of `reel generate --frames-dir` folders into one PNG (a row per folder), for the README.

Standard library only (the machines have no PIL): reads 8-bit RGB PNGs as reel writes them, writes one.

    tools/png_strip.py OUT.png --frames 0 40 80 120 160 --scale 2 DIR [DIR ...]
"""
import argparse
import os
import struct
import sys
import zlib


def read_png(path):
    data = open(path, "rb").read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        sys.exit(f"{path}: not a PNG file")
    pos, idat, w, h = 8, b"", 0, 0
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            w, h, depth, color = struct.unpack(">IIBB", body[:10])
            if depth != 8 or color != 2:
                sys.exit(f"{path}: only 8-bit RGB PNGs are supported (depth {depth}, colour type {color})")
        elif kind == b"IDAT":
            idat += body
    raw, stride, bpp = zlib.decompress(idat), w * 3, 3
    rows, prev = [], bytearray(stride)
    for y in range(h):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b = prev[x]
            c = prev[x - bpp] if x >= bpp else 0
            if f == 1:
                line[x] = (line[x] + a) & 255
            elif f == 2:
                line[x] = (line[x] + b) & 255
            elif f == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return w, h, rows


def write_png(path, w, h, rows):
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + r for r in rows)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)))
        f.write(chunk(b"IDAT", zlib.compress(raw, 9)))
        f.write(chunk(b"IEND", b""))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("dirs", nargs="+", help="frame folders (frame_000000.png, ...)")
    ap.add_argument("--frames", type=int, nargs="+", default=[0, 40, 80, 120, 159])
    ap.add_argument("--scale", type=int, default=2, help="nearest-neighbour upscale")
    ap.add_argument("--gap", type=int, default=2, help="pixels between tiles")
    a = ap.parse_args()
    grid = []
    for d in a.dirs:
        row = []
        for i in a.frames:
            p = os.path.join(d, f"frame_{i:06d}.png")
            if not os.path.exists(p):
                sys.exit(f"{p}: no such frame")
            row.append(read_png(p))
        grid.append(row)
    fw, fh = grid[0][0][0] * a.scale, grid[0][0][1] * a.scale
    W = len(a.frames) * (fw + a.gap) - a.gap
    H = len(grid) * (fh + a.gap) - a.gap
    out = [bytearray(b"\xff" * (W * 3)) for _ in range(H)]
    for r, row in enumerate(grid):
        for c, (w, h, rows) in enumerate(row):
            if (w * a.scale, h * a.scale) != (fw, fh):
                sys.exit("frames differ in size")
            x0, y0 = c * (fw + a.gap), r * (fh + a.gap)
            for y in range(fh):
                src = rows[y // a.scale]
                line = bytearray()
                for x in range(w):
                    line += src[3 * x : 3 * x + 3] * a.scale
                out[y0 + y][3 * x0 : 3 * x0 + len(line)] = line
    write_png(a.out, W, H, [bytes(r) for r in out])


if __name__ == "__main__":
    main()
