#!/usr/bin/env python3
"""Draws Belfry's app and tray icons (a bell on a rounded square whose colour is the
connection state; a red dot when something is unread) as PNG files, with no dependency
beyond the standard library. Run from the repository root; the PNGs are committed."""
import struct, zlib, os

STATES = {
    "connected": (46, 160, 67),     # green
    "syncing": (52, 120, 200),      # blue: connecting or catching up
    "reconnecting": (214, 140, 20), # amber
    "offline": (196, 50, 50),       # red: auth failed, not configured
}

def png(path, size, pixel):
    rows = []
    for y in range(size):
        row = bytearray([0])
        for x in range(size):
            row += bytes(pixel(x, y))
        rows.append(bytes(row))
    raw = b"".join(rows)
    def chunk(kind, data):
        c = struct.pack(">I", len(data)) + kind + data
        return c + struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 6, 0, 0, 0))
    data += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(data)

def inside_square(u, v):
    # Rounded square covering [-1, 1], corner radius 0.35.
    r = 0.35
    dx, dy = max(abs(u) - (1 - r), 0), max(abs(v) - (1 - r), 0)
    return dx * dx + dy * dy <= r * r

def inside_bell(u, v):
    if (u) ** 2 + (v + 0.72) ** 2 <= 0.09 ** 2:          # handle
        return True
    if (u) ** 2 + (v + 0.40) ** 2 <= 0.30 ** 2 and v <= -0.40:  # dome
        return True
    if -0.40 <= v <= 0.30:                              # body, flaring
        t = (v + 0.40) / 0.70
        if abs(u) <= 0.30 + 0.28 * t * t:
            return True
    if 0.30 <= v <= 0.42 and abs(u) <= 0.66:            # rim
        return True
    if u * u + (v - 0.56) ** 2 <= 0.13 ** 2:            # clapper
        return True
    return False

def inside_dot(u, v):
    return (u - 0.62) ** 2 + (v + 0.62) ** 2 <= 0.34 ** 2

def draw(size, colour, unread):
    ss = 4
    def pixel(x, y):
        acc = [0, 0, 0, 0]
        for sy in range(ss):
            for sx in range(ss):
                u = ((x + (sx + 0.5) / ss) / size) * 2 - 1
                v = ((y + (sy + 0.5) / ss) / size) * 2 - 1
                if unread and inside_dot(u, v):
                    c = (230, 40, 40, 255) if (u - 0.62) ** 2 + (v + 0.62) ** 2 <= 0.27 ** 2 else (255, 255, 255, 255)
                elif inside_square(u, v):
                    c = (255, 255, 255, 255) if inside_bell(u, v) else (*colour, 255)
                else:
                    c = (0, 0, 0, 0)
                for i in range(4):
                    acc[i] += c[i]
        n = ss * ss
        return [a // n for a in acc]
    return pixel

def main():
    out = "desktop/icons"
    os.makedirs(out, exist_ok=True)
    for name, colour in STATES.items():
        for unread in (False, True):
            suffix = "-unread" if unread else ""
            png(f"{out}/tray-{name}{suffix}.png", 64, draw(64, colour, unread))
    png(f"{out}/icon.png", 128, draw(128, STATES["connected"], False))
    png(f"{out}/32x32.png", 32, draw(32, STATES["connected"], False))

if __name__ == "__main__":
    main()
