"""Embedded, seeded data for the smoke profile, written as PNGs in the official layouts.

``synth_loco`` (MVTec LOCO layout, category ``breakfast_tray``): a tray split into two compartments.
Rules of a normal scene: exactly two circles in the left compartment, exactly two squares in the right
one, and the circles' two colours are the squares' two colours (paired). Logical anomalies break a rule
with individually flawless objects: an extra or a missing circle, a circle in the wrong compartment, a
square whose colour pairs with no circle. Structural anomalies damage the scene locally: a scratch, a
contamination blob, a missing part of an object. Masks: ground_truth/<type>/NNN/000.png (+001.png ...).

``synth_mvtec`` (MVTec AD layout, category ``tiles``): a tiled texture with grout lines, random phase
and per-tile colour jitter; defects ``crack`` (dark polyline) and ``stain`` (coloured blob), masks
ground_truth/<defect>/NNN_mask.png.

Difficulty knobs are the module constants below (they enter the build stamp, so changing one
regenerates the data).
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .common import atomic_build

GENERATOR_VERSION = 1
IMAGE_SIZE = 128
SIZES = {"train": 60, "val": 20, "good": 20, "per_type": 20}  # val: LOCO validation/good only

# --- synth_loco knobs ---
PALETTE = ((200, 40, 40), (40, 140, 60), (40, 70, 200), (220, 170, 30), (150, 60, 170))
TRAY_COLOUR = (205, 195, 175)
NOISE_STD = 6.0            # pixel noise (0..255 scale) on every image
CIRCLE_RADIUS = (10, 13)   # min, max radius in pixels (at IMAGE_SIZE)
SQUARE_HALF = (9, 12)      # min, max half side
SCRATCH_WIDTH = 3
BLOB_RADIUS = (5, 8)
LIGHT_JITTER = 12.0        # global brightness jitter per image (std, 0..255 scale)

# --- synth_mvtec knobs ---
TILE = 16
GROUT = 2
TILE_COLOUR = (170, 110, 80)
GROUT_COLOUR = (120, 115, 110)
TILE_JITTER = 10.0
CRACK_WIDTH = 2
CRACK_COLOUR = (100, 88, 80)  # close to the grout colour: a crack is subtle, not the darkest pixel
STAIN_RADIUS = (5, 9)
STAIN_COLOUR = (95, 120, 70)

LOCO_CATEGORY = "breakfast_tray"
MVTEC_CATEGORY = "tiles"
MVTEC_DEFECTS = ("crack", "stain")
LOCO_LOGICAL = ("extra_circle", "missing_circle", "misplaced_circle", "unpaired_colour")
LOCO_STRUCTURAL = ("scratch", "blob", "missing_part")


def _knobs() -> dict:
    g = globals()
    names = ["GENERATOR_VERSION", "IMAGE_SIZE", "SIZES", "PALETTE", "TRAY_COLOUR", "NOISE_STD", "CIRCLE_RADIUS",
             "SQUARE_HALF", "SCRATCH_WIDTH", "BLOB_RADIUS", "LIGHT_JITTER", "TILE", "GROUT", "TILE_COLOUR",
             "GROUT_COLOUR", "TILE_JITTER", "CRACK_WIDTH", "CRACK_COLOUR", "STAIN_RADIUS", "STAIN_COLOUR"]
    return {n: g[n] for n in names}


def stamp(name: str, seed: int) -> str:
    return json.dumps({"generator": name, "seed": seed, **_knobs()}, sort_keys=True)


def _save(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="PNG", optimize=False, compress_level=6)


def _finish(canvas: Image.Image, rng: np.random.Generator) -> np.ndarray:
    a = np.asarray(canvas, dtype=np.float32)
    a = a + rng.normal(0.0, LIGHT_JITTER) + rng.normal(0.0, NOISE_STD, a.shape)
    return np.clip(np.round(a), 0, 255).astype(np.uint8)


def _shape_mask(kind: str, cx: float, cy: float, r: float, size: int = IMAGE_SIZE) -> np.ndarray:
    m = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(m)
    box = (cx - r, cy - r, cx + r, cy + r)
    (d.ellipse if kind == "circle" else d.rectangle)(box, fill=255)
    return np.asarray(m) > 0


# ------------------------------------------------------------------ synth_loco
class _NoRoom(Exception):
    """The compartment is too full for one more object: the caller redraws the scene (same rng stream)."""


def _retry(make, rng: np.random.Generator, *args):
    for _ in range(100):
        try:
            return make(rng, *args)
        except _NoRoom:
            continue
    raise RuntimeError("synth_loco: no room for the objects; lower CIRCLE_RADIUS/SQUARE_HALF")


def _place(rng: np.random.Generator, x0: float, x1: float, taken: list[tuple[float, float, float]], r: float):
    """Random centre in compartment [x0, x1) not overlapping ``taken`` (cx, cy, r)."""
    m = r + 4
    for _ in range(60):
        cx, cy = rng.uniform(x0 + m, x1 - m), rng.uniform(8 + m, IMAGE_SIZE - 8 - m)
        if all((cx - a) ** 2 + (cy - b) ** 2 > (r + s + 4) ** 2 for a, b, s in taken):
            return cx, cy
    raise _NoRoom


def _scene(rng: np.random.Generator) -> list[dict]:
    """A normal scene: two circles left, two squares right, colours paired."""
    cols = rng.choice(len(PALETTE), 2, replace=False)
    objs, taken = [], []
    half = IMAGE_SIZE / 2
    for kind, (x0, x1), order in (("circle", (4, half - 2), cols), ("square", (half + 2, IMAGE_SIZE - 4), rng.permutation(cols))):
        for c in order:
            r = float(rng.uniform(*(CIRCLE_RADIUS if kind == "circle" else SQUARE_HALF)))
            cx, cy = _place(rng, x0, x1, taken, r * (1.0 if kind == "circle" else 1.42))
            taken.append((cx, cy, r * 1.42))
            objs.append({"kind": kind, "cx": cx, "cy": cy, "r": r, "colour": PALETTE[int(c)]})
    return objs


def _draw_tray(d: ImageDraw.ImageDraw) -> None:
    s = IMAGE_SIZE
    d.rectangle((0, 0, s - 1, s - 1), fill=TRAY_COLOUR, outline=(150, 140, 120), width=3)
    d.line((s // 2, 4, s // 2, s - 5), fill=(160, 150, 130), width=3)


def _draw_obj(d: ImageDraw.ImageDraw, o: dict) -> None:
    box = (o["cx"] - o["r"], o["cy"] - o["r"], o["cx"] + o["r"], o["cy"] + o["r"])
    dark = tuple(int(c * 0.6) for c in o["colour"])
    (d.ellipse if o["kind"] == "circle" else d.rectangle)(box, fill=o["colour"], outline=dark, width=2)
    hl = tuple(min(255, int(c * 1.3 + 30)) for c in o["colour"])
    d.ellipse((o["cx"] - o["r"] * 0.5, o["cy"] - o["r"] * 0.5, o["cx"] - o["r"] * 0.1, o["cy"] - o["r"] * 0.1), fill=hl)


def _render(objs: list[dict]) -> Image.Image:
    im = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE))
    d = ImageDraw.Draw(im)
    _draw_tray(d)
    for o in objs:
        _draw_obj(d, o)
    return im


def _obj_mask(o: dict) -> np.ndarray:
    return _shape_mask(o["kind"], o["cx"], o["cy"], o["r"] + 1)


def _logical(rng: np.random.Generator, kind: str) -> tuple[Image.Image, list[np.ndarray]]:
    objs = _scene(rng)
    circles = [o for o in objs if o["kind"] == "circle"]
    half = IMAGE_SIZE / 2
    if kind == "extra_circle":
        taken = [(o["cx"], o["cy"], o["r"] * 1.42) for o in objs]
        r = float(rng.uniform(*CIRCLE_RADIUS))
        cx, cy = _place(rng, 4, half - 2, taken, r)
        extra = {"kind": "circle", "cx": cx, "cy": cy, "r": r, "colour": circles[int(rng.integers(2))]["colour"]}
        objs.append(extra)
        masks = [_obj_mask(extra)]
    elif kind == "missing_circle":
        gone = circles[int(rng.integers(2))]
        objs.remove(gone)
        masks = [_obj_mask(gone)]
    elif kind == "misplaced_circle":
        moved = circles[int(rng.integers(2))]
        others = [(o["cx"], o["cy"], o["r"] * 1.42) for o in objs if o is not moved]
        new = dict(moved)
        new["cx"], new["cy"] = _place(rng, half + 2, IMAGE_SIZE - 4, others, moved["r"])
        objs[objs.index(moved)] = new
        masks = [_obj_mask(new), _obj_mask(moved)]
    else:  # unpaired_colour
        sq = [o for o in objs if o["kind"] == "square"][int(rng.integers(2))]
        used = {o["colour"] for o in objs}
        free = [c for c in PALETTE if c not in used]
        sq["colour"] = free[int(rng.integers(len(free)))]
        masks = [_obj_mask(sq)]
    return _render(objs), masks


def _blob(d: ImageDraw.ImageDraw, rng: np.random.Generator, cx: float, cy: float, r: float, fill) -> None:
    for _ in range(4):
        ox, oy = rng.normal(0, r / 3, 2)
        rx, ry = r * rng.uniform(0.5, 1.0, 2)
        d.ellipse((cx + ox - rx, cy + oy - ry, cx + ox + rx, cy + oy + ry), fill=fill)


def _structural(rng: np.random.Generator, kind: str) -> tuple[Image.Image, list[np.ndarray]]:
    objs = _scene(rng)
    im = _render(objs)
    target = objs[int(rng.integers(len(objs)))]
    m = Image.new("L", im.size, 0)
    dm, di = ImageDraw.Draw(m), ImageDraw.Draw(im)
    if kind == "scratch":
        a = rng.uniform(0, np.pi)
        L = target["r"] * rng.uniform(1.4, 2.0)
        p = (target["cx"] - L / 2 * np.cos(a), target["cy"] - L / 2 * np.sin(a),
             target["cx"] + L / 2 * np.cos(a), target["cy"] + L / 2 * np.sin(a))
        di.line(p, fill=(35, 30, 30), width=SCRATCH_WIDTH)
        dm.line(p, fill=255, width=SCRATCH_WIDTH + 2)
        return im, [np.asarray(m) > 0]
    if kind == "blob":
        r = float(rng.uniform(*BLOB_RADIUS))
        cx, cy = target["cx"] + rng.normal(0, target["r"] / 2), target["cy"] + rng.normal(0, target["r"] / 2)
        state = rng.bit_generator.state
        _blob(di, rng, cx, cy, r, (90, 60, 35))
        rng.bit_generator.state = state  # same ellipses on the mask
        _blob(dm, rng, cx, cy, r, 255)
        return im, [np.asarray(m) > 0]
    # missing_part: a wedge of the object is gone (tray shows through)
    a = rng.uniform(0, 2 * np.pi)
    R = target["r"] * 2
    wedge = [(target["cx"], target["cy"])] + [
        (target["cx"] + R * np.cos(a + t), target["cy"] + R * np.sin(a + t)) for t in np.linspace(0, 1.2, 6)]
    dm.polygon(wedge, fill=255)
    cut = (np.asarray(m) > 0) & _obj_mask(target)
    arr = np.asarray(im).copy()
    arr[cut] = TRAY_COLOUR
    return Image.fromarray(arr), [cut]


def _build_loco(tmp: Path, seed: int) -> None:
    c = tmp / LOCO_CATEGORY
    for split, folder, n in (("train", "train/good", SIZES["train"]), ("val", "validation/good", SIZES["val"]),
                             ("good", "test/good", SIZES["good"])):
        for i in range(n):
            rng = np.random.default_rng([seed, hash_name(split), i])
            _save(_finish(_render(_retry(_scene, rng)), rng), c / folder / f"{i:03d}.png")
    for tname, kinds, make in (("logical_anomalies", LOCO_LOGICAL, _logical),
                               ("structural_anomalies", LOCO_STRUCTURAL, _structural)):
        for i in range(SIZES["per_type"]):
            rng = np.random.default_rng([seed, hash_name(tname), i])
            im, masks = _retry(make, rng, kinds[i % len(kinds)])
            _save(_finish(im, rng), c / "test" / tname / f"{i:03d}.png")
            for j, mk in enumerate(masks):
                _save(mk.astype(np.uint8) * 255, c / "ground_truth" / tname / f"{i:03d}" / f"{j:03d}.png")
    (c / "readme.txt").write_text(__doc__.split("\n\n")[1] + "\n")


# ------------------------------------------------------------------ synth_mvtec
def _tiles(rng: np.random.Generator) -> Image.Image:
    s = IMAGE_SIZE
    ox, oy = rng.integers(0, TILE, 2)
    arr = np.empty((s, s, 3), dtype=np.float32)
    arr[:] = GROUT_COLOUR
    for ty in range(-1, s // TILE + 1):
        for tx in range(-1, s // TILE + 1):
            x0, y0 = tx * TILE + ox + GROUT, ty * TILE + oy + GROUT
            x1, y1 = x0 + TILE - GROUT, y0 + TILE - GROUT
            col = np.asarray(TILE_COLOUR) + rng.normal(0, TILE_JITTER)
            arr[max(y0, 0):max(min(y1, s), 0), max(x0, 0):max(min(x1, s), 0)] = col
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _mvtec_defect(rng: np.random.Generator, kind: str) -> tuple[Image.Image, np.ndarray]:
    im = _tiles(rng)
    m = Image.new("L", im.size, 0)
    di, dm = ImageDraw.Draw(im), ImageDraw.Draw(m)
    cx, cy = rng.uniform(24, IMAGE_SIZE - 24, 2)
    if kind == "crack":
        pts, a = [(cx, cy)], rng.uniform(0, 2 * np.pi)
        for _ in range(4):
            a += rng.normal(0, 0.6)
            pts.append((pts[-1][0] + 8 * np.cos(a), pts[-1][1] + 8 * np.sin(a)))
        di.line(pts, fill=CRACK_COLOUR, width=CRACK_WIDTH, joint="curve")
        dm.line(pts, fill=255, width=CRACK_WIDTH + 2, joint="curve")
    else:
        r = float(rng.uniform(*STAIN_RADIUS))
        state = rng.bit_generator.state
        _blob(di, rng, cx, cy, r, STAIN_COLOUR)
        rng.bit_generator.state = state
        _blob(dm, rng, cx, cy, r, 255)
    return im, np.asarray(m) > 0


def _build_mvtec(tmp: Path, seed: int) -> None:
    c = tmp / MVTEC_CATEGORY
    for split, folder, n in (("train", "train/good", SIZES["train"]), ("good", "test/good", SIZES["good"])):
        for i in range(n):
            rng = np.random.default_rng([seed, hash_name("mvtec_" + split), i])
            _save(_finish(_tiles(rng), rng), c / folder / f"{i:03d}.png")
    for defect in MVTEC_DEFECTS:
        for i in range(SIZES["per_type"]):
            rng = np.random.default_rng([seed, hash_name(defect), i])
            im, mk = _mvtec_defect(rng, defect)
            _save(_finish(im, rng), c / "test" / defect / f"{i:03d}.png")
            _save(mk.astype(np.uint8) * 255, c / "ground_truth" / defect / f"{i:03d}_mask.png")


def hash_name(name: str) -> int:
    """A stable integer for a split name (Python's hash() is salted per process)."""
    return zlib.crc32(name.encode())


def generate(name: str, dest: Path, seed: int = 0) -> Path:
    """Write ``synth_loco`` or ``synth_mvtec`` under ``dest`` atomically; reuse an identical earlier build."""
    build = {"synth_loco": _build_loco, "synth_mvtec": _build_mvtec}[name]
    return atomic_build(Path(dest), lambda tmp: build(tmp, seed), stamp(name, seed))
