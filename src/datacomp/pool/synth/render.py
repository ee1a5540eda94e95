"""Rendering scenes to small RGB images with PIL.

A concept is drawn as its base silhouette (``shape``) plus a distinguishing ``mark`` in a
contrasting colour (a dot, stripes, an outline, a satellite...). Shape and mark masks are drawn
at 4x, downsampled (anti-aliased) and cached per (shape, mark, pixel size), so a 48-px image costs
a few hundred microseconds. Styles: ``normal`` (pool, curated, main eval set), ``style`` (an
other-palette, texture-filled, softened rendering: a distribution shift), ``clutter`` (busy
background plus distractor marks), ``lowres`` (drawn at a third of the size and enlarged, as
CIFAR's 32-px photos).
"""
from __future__ import annotations

import io
import math
import random
from functools import lru_cache

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont

from .scene import Scene
from .world import World

SS = 4  # supersampling factor of the cached masks
LAYOUT = {"center": (0.5, 0.5), "left": (0.27, 0.5), "right": (0.73, 0.5), "top": (0.5, 0.27), "bottom": (0.5, 0.73)}
SIZE_FRAC = {"large": 0.62, "small": 0.42}
COUNT_FRAC = {1: 1.0, 2: 0.74, 3: 0.6}


# ---- masks --------------------------------------------------------------------------------------

def _poly(d: ImageDraw.ImageDraw, pts, L: int, fill: int = 255) -> None:
    d.polygon([(x * L, y * L) for x, y in pts], fill=fill)


def _regular(n: int, r: float, rot: float = -math.pi / 2, cx: float = 0.5, cy: float = 0.5):
    return [(cx + r * math.cos(rot + 2 * math.pi * k / n), cy + r * math.sin(rot + 2 * math.pi * k / n)) for k in range(n)]


def _draw_shape(d: ImageDraw.ImageDraw, shape: str, L: int, fill: int = 255, scale: float = 1.0) -> None:
    """Draw ``shape`` into the unit box (scaled about the centre by ``scale``)."""
    def t(pts):
        return [(0.5 + (x - 0.5) * scale, 0.5 + (y - 0.5) * scale) for x, y in pts]

    def box(x0, y0, x1, y1):
        (a, b), (c, e) = t([(x0, y0), (x1, y1)])
        return [a * L, b * L, c * L, e * L]

    if shape == "circle":
        d.ellipse(box(0.05, 0.05, 0.95, 0.95), fill=fill)
    elif shape == "square":
        d.rectangle(box(0.1, 0.1, 0.9, 0.9), fill=fill)
    elif shape == "triangle":
        _poly(d, t([(0.5, 0.04), (0.96, 0.92), (0.04, 0.92)]), L, fill)
    elif shape == "star":
        pts = []
        for k in range(10):
            r = 0.49 if k % 2 == 0 else 0.2
            a = -math.pi / 2 + math.pi * k / 5
            pts.append((0.5 + r * math.cos(a), 0.53 + r * math.sin(a)))
        _poly(d, t(pts), L, fill)
    elif shape == "cross":
        d.rectangle(box(0.35, 0.04, 0.65, 0.96), fill=fill)
        d.rectangle(box(0.04, 0.35, 0.96, 0.65), fill=fill)
    elif shape == "diamond":
        _poly(d, t([(0.5, 0.02), (0.86, 0.5), (0.5, 0.98), (0.14, 0.5)]), L, fill)
    elif shape == "hexagon":
        _poly(d, t(_regular(6, 0.48, rot=0.0)), L, fill)
    elif shape == "crescent":
        d.ellipse(box(0.04, 0.04, 0.96, 0.96), fill=fill)
        d.ellipse(box(0.34, -0.06, 1.14, 0.74), fill=0)
    elif shape == "arrow":
        d.rectangle(box(0.04, 0.36, 0.56, 0.64), fill=fill)
        _poly(d, t([(0.5, 0.1), (0.96, 0.5), (0.5, 0.9)]), L, fill)
    elif shape == "heart":
        d.ellipse(box(0.06, 0.12, 0.52, 0.58), fill=fill)
        d.ellipse(box(0.48, 0.12, 0.94, 0.58), fill=fill)
        _poly(d, t([(0.08, 0.43), (0.92, 0.43), (0.5, 0.94)]), L, fill)
    elif shape == "bar":
        d.rectangle(box(0.02, 0.3, 0.98, 0.7), fill=fill)
    elif shape == "tee":
        d.rectangle(box(0.04, 0.06, 0.96, 0.38), fill=fill)
        d.rectangle(box(0.34, 0.3, 0.66, 0.96), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _hi(L: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    im = Image.new("L", (L, L), 0)
    return im, ImageDraw.Draw(im)


@lru_cache(maxsize=8192)
def object_masks(shape: str, mark: str, s: int) -> tuple[Image.Image, Image.Image]:
    """(fill mask, mark mask) of one object of ``s`` x ``s`` pixels, anti-aliased."""
    L = max(4, s) * SS
    fill, d = _hi(L)
    _draw_shape(d, shape, L)
    m, dm = _hi(L)
    clip = True
    if mark == "none":
        pass
    elif mark == "dot":
        dm.ellipse([0.33 * L, 0.33 * L, 0.67 * L, 0.67 * L], fill=255)
    elif mark == "hstripe":
        dm.rectangle([0, 0.4 * L, L, 0.6 * L], fill=255)
    elif mark == "vstripe":
        dm.rectangle([0.4 * L, 0, 0.6 * L, L], fill=255)
    elif mark == "outline":
        k = max(3, (L // 7) | 1)
        m = ImageChops.subtract(fill, fill.filter(ImageFilter.MinFilter(k)))
        clip = False
    elif mark == "satellite":  # a second, small part outside the silhouette's top-right corner
        sat, ds = _hi(L)
        ds.ellipse([0.74 * L, 0.0, 1.0 * L, 0.26 * L], fill=255)
        fill = ImageChops.lighter(fill, sat)
    elif mark == "half":
        dm.rectangle([0.5 * L, 0, L, L], fill=255)
    elif mark == "diag":
        dm.line([(0, 0), (L, L)], fill=255, width=max(2, int(0.16 * L)))
    elif mark == "inner":
        _draw_shape(dm, shape, L, scale=0.42)
    elif mark == "twin":
        dm.ellipse([0.22 * L, 0.4 * L, 0.44 * L, 0.62 * L], fill=255)
        dm.ellipse([0.56 * L, 0.4 * L, 0.78 * L, 0.62 * L], fill=255)
    else:
        raise ValueError(f"unknown mark {mark!r}")
    if clip and mark != "none":
        m = ImageChops.multiply(m, fill)
    size = (max(1, s), max(1, s))
    return fill.resize(size, Image.Resampling.BOX), m.resize(size, Image.Resampling.BOX)


# ---- backgrounds --------------------------------------------------------------------------------

def _mix(a, b, t: float) -> tuple[int, int, int]:
    return tuple(int(round(x + (y - x) * t)) for x, y in zip(a, b))


def background(scene: Scene, world: World, W: int, H: int, rng: random.Random, kind: str | None = None) -> Image.Image:
    kind = kind or scene.background
    c1 = np.array(world.backgrounds[scene.bg_colour], dtype=np.float32)
    c2 = np.array(world.backgrounds[scene.bg_colour2], dtype=np.float32)
    if kind == "plain":
        return Image.new("RGB", (W, H), tuple(int(v) for v in c1))
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    if kind == "stripes":
        ang = rng.choice((0.0, math.pi / 2, math.pi / 4, -math.pi / 4))
        period = rng.uniform(4.0, 10.0)
        phase = (xx * math.cos(ang) + yy * math.sin(ang)) / period + rng.random()
        sel = (np.floor(phase) % 2 == 0)[..., None]
        arr = np.where(sel, c1, c2)
    elif kind == "gradient":
        ang = rng.uniform(0, 2 * math.pi)
        proj = xx * math.cos(ang) + yy * math.sin(ang)
        t = ((proj - proj.min()) / max(1e-6, float(proj.max() - proj.min())))[..., None]
        arr = c1 * (1 - t) + c2 * t
    elif kind == "noise":
        g = np.random.default_rng(rng.getrandbits(63))
        arr = c1 + g.normal(0.0, 28.0, size=(H, W, 1)) + g.normal(0.0, 10.0, size=(H, W, 3))
    else:
        raise ValueError(f"unknown background {kind!r}")
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def mark_colour(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    lum = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return (24, 24, 24) if lum > 140 else (244, 244, 244)


# ---- scenes -------------------------------------------------------------------------------------

def object_boxes(scene: Scene, W: int, H: int, rng: random.Random, size_scale: float = 1.0) -> list[tuple[int, int, int]]:
    """(x, y, s) of each object: top-left corner and side, laid out by position and count."""
    base = min(W, H)
    n = scene.count
    s = base * SIZE_FRAC[scene.size] * COUNT_FRAC[n] * size_scale
    cx, cy = LAYOUT[scene.position]
    cx, cy = cx * W, cy * H
    vertical = scene.position in ("left", "right")
    extent = H if vertical else W
    s = max(2.0, min(s, 0.95 * extent / (n * 1.05)))
    step = s * 1.05
    boxes = []
    for k in range(n):
        off = (k - (n - 1) / 2) * step
        jx = rng.uniform(-0.04, 0.04) * base
        jy = rng.uniform(-0.04, 0.04) * base
        x = cx + (0 if vertical else off) + jx - s / 2
        y = cy + (off if vertical else 0) + jy - s / 2
        boxes.append((int(round(x)), int(round(y)), int(round(s))))
    return boxes


def _paste_objects(canvas: Image.Image, scene: Scene, world: World, boxes, rgb, style: str, rng: random.Random) -> None:
    concept = world.concepts[scene.concept]
    mrgb = mark_colour(world.colours[scene.colour])
    for x, y, s in boxes:
        fill, mark = object_masks(concept.shape, concept.mark, s)
        if style == "style":  # texture fill: stripes of the colour and a lighter tint
            tex = Image.new("RGB", fill.size, rgb)
            td = ImageDraw.Draw(tex)
            tint = _mix(rgb, (255, 255, 255), 0.45)
            step = max(2, s // 5)
            for k in range(-s, 2 * s, 2 * step):
                td.line([(k, 0), (k + s, s)], fill=tint, width=max(1, step // 2))
            canvas.paste(tex, (x, y), fill)
        else:
            canvas.paste(rgb, (x, y, x + fill.width, y + fill.height), fill)
        if concept.mark != "none":
            canvas.paste(mrgb, (x, y, x + mark.width, y + mark.height), mark)


LOWRES = 3  # ``lowres``: drawn at 1/LOWRES of the size, then enlarged (bilinear)


def render_scene(scene: Scene, world: World, W: int, H: int, style: str = "normal") -> Image.Image:
    if style == "lowres":
        small = render_scene(scene, world, max(8, W // LOWRES), max(8, H // LOWRES))
        return small.resize((W, H), Image.BILINEAR)
    rng = random.Random(scene.jitter)
    if style == "clutter":
        canvas = background(scene, world, W, H, rng, kind="noise")
        d = ImageDraw.Draw(canvas)
        palette = list(world.colours.values()) + list(world.backgrounds.values())
        for _ in range(rng.randint(6, 10)):  # distractor strokes and specks
            c = rng.choice(palette)
            x0, y0 = rng.uniform(0, W), rng.uniform(0, H)
            if rng.random() < 0.5:
                ang, ln = rng.uniform(0, 2 * math.pi), rng.uniform(0.15, 0.45) * min(W, H)
                d.line([(x0, y0), (x0 + ln * math.cos(ang), y0 + ln * math.sin(ang))], fill=c, width=1)
            else:
                r = rng.uniform(0.6, 1.6)
                d.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=c)
    else:
        canvas = background(scene, world, W, H, rng)
    rgb = world.colours[scene.colour]
    if style == "style":  # another palette: desaturated towards gray
        rgb = _mix(rgb, (128, 128, 128), 0.3)
    boxes = object_boxes(scene, W, H, rng)
    _paste_objects(canvas, scene, world, boxes, rgb, style, rng)
    if style == "style":
        canvas = canvas.filter(ImageFilter.GaussianBlur(0.6))
    return canvas


def render_banner(scene: Scene, world: World, W: int, H: int) -> Image.Image:
    """A wide ad-like strip: gradient, a small object, blocks of 'text'."""
    rng = random.Random(scene.jitter)
    canvas = background(scene, world, W, H, rng, kind="gradient")
    d = ImageDraw.Draw(canvas)
    s = max(3, int(0.8 * H))
    ox = rng.choice((int(0.04 * W), W - s - int(0.04 * W)))
    concept = world.concepts[scene.concept]
    fill, mark = object_masks(concept.shape, concept.mark, s)
    y = (H - s) // 2
    canvas.paste(world.colours[scene.colour], (ox, y, ox + s, y + s), fill)
    if concept.mark != "none":
        canvas.paste(mark_colour(world.colours[scene.colour]), (ox, y, ox + s, y + s), mark)
    tx0 = s + int(0.1 * W) if ox < W // 2 else int(0.08 * W)
    tcol = mark_colour(world.backgrounds[scene.bg_colour])
    for k in range(rng.randint(1, 2)):
        ty = int(H * (0.25 + 0.35 * k))
        d.rectangle([tx0, ty, tx0 + int(rng.uniform(0.3, 0.55) * W), ty + max(1, H // 6)], fill=tcol)
    return canvas


@lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except Exception:  # Pillow built without FreeType: the bitmap font
        return ImageFont.load_default()


def render_text(text: str, W: int, H: int, bg: tuple[int, int, int], rng: random.Random) -> Image.Image:
    """The caption's words as text on a plain background (a text-only image)."""
    canvas = Image.new("RGB", (W, H), bg)
    d = ImageDraw.Draw(canvas)
    font = _font(max(7, min(W, H) // rng.choice((4, 5, 6))))
    fg = mark_colour(bg)
    words = text.split() or ["image"]
    lines, cur = [], ""
    for w in words:
        trial = f"{cur} {w}".strip()
        if cur and d.textlength(trial, font=font) > W - 4:
            lines.append(cur)
            cur = w
        else:
            cur = trial
    lines.append(cur)
    line_h = font.size + 1 if hasattr(font, "size") else 11
    y = 2 + rng.randint(0, 3)
    for line in lines:
        if y > H - 4:
            break
        d.text((2, y), line, font=font, fill=fg)
        y += line_h
    return canvas


def shifted_copy(img: Image.Image, rng: random.Random) -> Image.Image:
    """A near duplicate: crop a few pixels off one corner and resize back."""
    W, H = img.size
    dx, dy = rng.randint(1, 3), rng.randint(1, 3)
    box = (dx, dy, W, H) if rng.random() < 0.5 else (0, 0, W - dx, H - dy)
    return img.crop(box).resize((W, H), Image.Resampling.BILINEAR)


def encode_jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def decode(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")
