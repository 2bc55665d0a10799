"""A built-in product set the project renders itself: packaging, query photos and a kiosk clip.

The demo, `shelfsight eval` smoke runs and the kiosk tests need products that
look like real packaging (flat printed faces with text, logos and patterns),
photographed the way a kiosk sees them: at an angle, at varying distance, under
other light, slightly blurred, in front of clutter. Everything is drawn with
Pillow and warped with OpenCV from a seed, so the set is identical on every
machine and needs neither network nor font files.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from shelfsight.edge_app.core.errors import InputError

log = logging.getLogger(__name__)

KINDS = ("box", "carton", "can", "pouch")
PATTERNS = ("stripes", "dots", "checker", "chevron", "waves", "grid", "diagonal", "rings")
LOGOS = ("circle", "star", "triangle", "diamond", "hexagon", "leaf", "crescent", "cross")
CATEGORIES = {
    "box": ("cereal", "snacks", "tea"),
    "carton": ("dairy", "juice"),
    "can": ("soup", "drinks", "coffee"),
    "pouch": ("snacks", "pet food", "sweets"),
}
_SYLLABLES = ("ka", "lo", "mi", "ze", "ru", "po", "ta", "ve", "no", "sa", "bri", "dor", "fen", "gal", "qui", "xan")
_WORDS = ("CRUNCH", "FRESH", "GOLD", "PURE", "ORIGINAL", "CLASSIC", "ZEST", "ROAST", "BERRY", "LIGHT", "BOLD", "MILD")
# Saturated, well-separated hues so products differ in colour as well as layout.
_PALETTE = (
    (200, 30, 40),
    (20, 90, 190),
    (240, 190, 20),
    (30, 150, 70),
    (120, 40, 160),
    (240, 120, 20),
    (10, 160, 170),
    (220, 60, 140),
    (90, 60, 30),
    (40, 40, 50),
    (150, 200, 40),
    (250, 245, 235),
)

PACKAGE_HEIGHT = 320  # pixels of the rendered front face
SAMPLES_VERSION = 1  # bump when rendering changes, so cached sample sets are re-rendered
MANIFEST_NAME = "designs.json"


@dataclass(frozen=True)
class ProductDesign:
    """Everything needed to redraw one product's front face."""

    sku: str
    name: str
    brand: str
    flavour: str
    description: str
    category: str
    price: float
    kind: str
    primary: tuple[int, int, int]
    secondary: tuple[int, int, int]
    accent: tuple[int, int, int]
    pattern: str
    logo: str
    seed: int


@dataclass(frozen=True)
class SampleSet:
    """Where `generate_sample_set` wrote its files (ImageFolder layouts: one subfolder per product id)."""

    root: Path
    catalog_dir: Path
    queries_dir: Path
    products_csv: Path
    seed: int
    n_products: int
    designs: tuple[ProductDesign, ...] = field(repr=False, default=())


@dataclass(frozen=True)
class ClipSegment:
    start_s: float
    end_s: float
    product_id: str | None  # None: nothing in front of the camera


@dataclass(frozen=True)
class Clip:
    path: Path
    fps: float
    size: tuple[int, int]  # (width, height)
    segments: tuple[ClipSegment, ...]

    def product_at(self, t: float) -> str | None:
        for seg in self.segments:
            if seg.start_s <= t < seg.end_s:
                return seg.product_id
        return None


# --------------------------------------------------------------------------- designs


def _brand_name(rng: np.random.Generator, taken: set[str]) -> str:
    while True:
        n = int(rng.integers(2, 4))
        name = "".join(_SYLLABLES[int(i)] for i in rng.integers(0, len(_SYLLABLES), n)).capitalize()
        if name not in taken and 4 <= len(name) <= 9:
            taken.add(name)
            return name


def make_designs(n_products: int, seed: int = 0) -> list[ProductDesign]:
    """`n_products` distinct designs; the first ones differ in kind, colour, pattern and logo together."""
    if n_products < 1:
        raise InputError("n_products must be at least 1")
    rng = np.random.default_rng(seed)
    taken: set[str] = set()
    designs = []
    colour_order = rng.permutation(len(_PALETTE))
    for i in range(n_products):
        kind = KINDS[i % len(KINDS)]
        primary = _PALETTE[int(colour_order[i % len(_PALETTE)])]
        secondary = _PALETTE[int(colour_order[(i * 5 + 3) % len(_PALETTE)])]
        if secondary == primary:
            secondary = _PALETTE[int(colour_order[(i + 1) % len(_PALETTE)])]
        accent = tuple(int(v) for v in rng.integers(0, 256, 3))
        brand = _brand_name(rng, taken)
        flavour = _WORDS[int(rng.integers(0, len(_WORDS)))]
        category = CATEGORIES[kind][int(rng.integers(0, len(CATEGORIES[kind])))]
        designs.append(
            ProductDesign(
                sku=f"P{i + 1:04d}",
                name=f"{brand} {flavour.title()}",
                brand=brand,
                flavour=flavour,
                description=f"{brand} {flavour.lower()} {category}, {kind} pack.",
                category=category,
                price=round(float(rng.uniform(0.99, 14.99)), 2),
                kind=kind,
                primary=primary,
                secondary=secondary,
                accent=accent,  # type: ignore[arg-type]
                pattern=PATTERNS[(i * 3 + i // len(PATTERNS)) % len(PATTERNS)],
                logo=LOGOS[(i * 5 + i // len(LOGOS)) % len(LOGOS)],
                seed=int(rng.integers(0, 2**31)),
            )
        )
    return designs


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _draw_pattern(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], design: ProductDesign) -> None:
    x0, y0, x1, y1 = box
    colour = design.secondary
    rng = np.random.default_rng(design.seed)
    step = int(rng.integers(14, 26))
    if design.pattern == "stripes":
        for y in range(y0, y1, step):
            draw.rectangle((x0, y, x1, y + step // 2), fill=colour)
    elif design.pattern == "dots":
        for j, y in enumerate(range(y0, y1, step)):
            for x in range(x0 + (j % 2) * step // 2, x1, step):
                draw.ellipse((x, y, x + step // 2, y + step // 2), fill=colour)
    elif design.pattern == "checker":
        for j, y in enumerate(range(y0, y1, step)):
            for k, x in enumerate(range(x0, x1, step)):
                if (j + k) % 2:
                    draw.rectangle((x, y, x + step - 1, y + step - 1), fill=colour)
    elif design.pattern == "chevron":
        for y in range(y0 - step, y1, step):
            pts = [(x, y + (step // 2 if (x // step) % 2 else 0)) for x in range(x0, x1 + step, step)]
            draw.line(pts, fill=colour, width=max(3, step // 3))
    elif design.pattern == "waves":
        for y in range(y0, y1, step):
            pts = [(x, int(y + 5 * math.sin(x / 7.0))) for x in range(x0, x1 + 1, 3)]
            draw.line(pts, fill=colour, width=4)
    elif design.pattern == "grid":
        for y in range(y0, y1, step):
            draw.line((x0, y, x1, y), fill=colour, width=2)
        for x in range(x0, x1, step):
            draw.line((x, y0, x, y1), fill=colour, width=2)
    elif design.pattern == "diagonal":
        h = y1 - y0
        for x in range(x0 - h, x1, step):
            draw.line((x, y1, x + h, y0), fill=colour, width=max(3, step // 3))
    else:  # rings
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        for r in range(step, max(x1 - x0, y1 - y0), step):
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=colour, width=4)


def _logo_points(kind: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    def polygon(n: int, radius: float, phase: float) -> list[tuple[float, float]]:
        return [
            (cx + radius * math.cos(phase + 2 * math.pi * k / n), cy + radius * math.sin(phase + 2 * math.pi * k / n))
            for k in range(n)
        ]

    if kind == "star":
        outer, inner = polygon(5, r, -math.pi / 2), polygon(5, r * 0.45, -math.pi / 2 + math.pi / 5)
        return [p for pair in zip(outer, inner) for p in pair]
    if kind == "triangle":
        return polygon(3, r, -math.pi / 2)
    if kind == "diamond":
        return polygon(4, r, 0.0)
    if kind == "hexagon":
        return polygon(6, r, 0.0)
    if kind == "cross":
        a = r * 0.35
        return [
            (cx - a, cy - r),
            (cx + a, cy - r),
            (cx + a, cy - a),
            (cx + r, cy - a),
            (cx + r, cy + a),
            (cx + a, cy + a),
            (cx + a, cy + r),
            (cx - a, cy + r),
            (cx - a, cy + a),
            (cx - r, cy + a),
            (cx - r, cy - a),
            (cx - a, cy - a),
        ]
    return []


def _draw_logo(draw: ImageDraw.ImageDraw, cx: int, cy: int, r: int, design: ProductDesign) -> None:
    fill, ring = design.accent, (255, 255, 255)
    draw.ellipse((cx - r - 6, cy - r - 6, cx + r + 6, cy + r + 6), fill=ring)
    if design.logo == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        draw.ellipse((cx - r // 2, cy - r // 2, cx + r // 2, cy + r // 2), fill=ring)
    elif design.logo == "leaf":
        draw.ellipse((cx - r, cy - r // 2, cx + r, cy + r // 2), fill=fill)
        draw.line((cx - r, cy, cx + r, cy), fill=ring, width=3)
    elif design.logo == "crescent":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        draw.ellipse((cx - r // 3, cy - r, cx + r + r // 2, cy + r // 2), fill=ring)
    else:
        draw.polygon(_logo_points(design.logo, cx, cy, r), fill=fill)
    draw.text((cx, cy + r + 4), design.brand[0], fill=(0, 0, 0), font=_font(max(10, r // 2)), anchor="mt")


def _draw_barcode(draw: ImageDraw.ImageDraw, x: int, y: int, w: int, h: int, design: ProductDesign) -> None:
    rng = np.random.default_rng(design.seed + 7)
    draw.rectangle((x - 4, y - 4, x + w + 4, y + h + 16), fill=(255, 255, 255))
    cursor = x
    while cursor < x + w:
        bar = int(rng.integers(1, 4))
        if rng.random() < 0.55:
            draw.rectangle((cursor, y, cursor + bar - 1, y + h), fill=(0, 0, 0))
        cursor += bar
    draw.text((x + w // 2, y + h + 2), design.sku, fill=(0, 0, 0), font=_font(11), anchor="mt")


def _outline_mask(kind: str, w: int, h: int) -> Image.Image:
    """The silhouette of the front face: what is packaging and what is background."""
    mask = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(mask)
    if kind == "carton":
        gable = h // 6
        d.polygon([(0, gable), (w // 2, 0), (w - 1, gable), (w - 1, h - 1), (0, h - 1)], fill=255)
    elif kind == "can":
        cap = w // 8
        d.rectangle((0, cap, w - 1, h - 1 - cap), fill=255)
        d.ellipse((0, 0, w - 1, 2 * cap), fill=255)
        d.ellipse((0, h - 1 - 2 * cap, w - 1, h - 1), fill=255)
    elif kind == "pouch":
        d.rounded_rectangle((0, 0, w - 1, h - 1), radius=w // 5, fill=255)
    else:
        d.rectangle((0, 0, w - 1, h - 1), fill=255)
    return mask


def render_package(design: ProductDesign, height: int = PACKAGE_HEIGHT) -> tuple[np.ndarray, np.ndarray]:
    """The product's front face as (RGB uint8 (H, W, 3), mask uint8 (H, W) 0/255)."""
    aspect = {"box": 0.72, "carton": 0.55, "can": 0.62, "pouch": 0.8}[design.kind]
    h, w = height, int(round(height * aspect))
    img = Image.new("RGB", (w, h), design.primary)
    draw = ImageDraw.Draw(img)
    top = h // 6 if design.kind == "carton" else h // 10
    _draw_pattern(draw, (0, int(h * 0.55), w, h), design)
    # Brand band
    band_y0, band_y1 = top + 6, top + int(h * 0.2)
    draw.rectangle((6, band_y0, w - 7, band_y1), fill=(255, 255, 255))
    draw.rectangle((10, band_y0 + 4, w - 11, band_y1 - 4), outline=design.secondary, width=3)
    brand_size = max(12, min(int(h * 0.1), int(1.5 * (w - 24) / max(4, len(design.brand)))))
    draw.text(
        (w // 2, (band_y0 + band_y1) // 2),
        design.brand.upper(),
        fill=design.secondary,
        font=_font(brand_size),
        anchor="mm",
    )
    # Logo between the brand band and the flavour band, sized to fit
    fl_y = int(h * 0.55) + 6
    logo_r = max(8, min(int(w * 0.15), (fl_y - band_y1 - 34) // 2))
    _draw_logo(draw, w // 2, band_y1 + 10 + logo_r, logo_r, design)
    draw.rectangle((0, fl_y - 2, w, fl_y + int(h * 0.08)), fill=design.accent)
    draw.text(
        (w // 2, fl_y + int(h * 0.04)),
        design.flavour,
        fill=(255, 255, 255),
        font=_font(max(10, int(h * 0.06))),
        anchor="mm",
        stroke_width=2,
        stroke_fill=(0, 0, 0),
    )
    # Small print and barcode: fine, high-contrast detail for local features
    # Where the small print and barcode go varies by product, as on real packaging.
    left = design.seed % 2 == 0
    bw = int(w * 0.42)
    net_y = int(h * (0.68 if design.seed % 3 else 0.9))
    bar_y = int(h * (0.82 if design.seed % 3 else 0.7))
    draw.text(
        (8 if not left else w - 8, net_y),
        f"NET {int(100 + design.seed % 900)} g",
        fill=(255, 255, 255),
        font=_font(12),
        stroke_width=1,
        stroke_fill=(0, 0, 0),
        anchor="la" if not left else "ra",
    )
    _draw_barcode(draw, 10 if left else w - bw - 10, bar_y, bw, int(h * 0.07), design)
    rgb = np.asarray(img, dtype=np.uint8).copy()
    if design.kind == "can":
        # Cylinder shading: darker at the sides, a highlight left of centre.
        x = np.linspace(-1.0, 1.0, w, dtype=np.float32)
        shade = 0.55 + 0.45 * np.sqrt(np.clip(1 - x**2, 0, 1)) + 0.25 * np.exp(-((x + 0.35) ** 2) / 0.01)
        rgb = np.clip(rgb.astype(np.float32) * shade[None, :, None], 0, 255).astype(np.uint8)
    mask = np.asarray(_outline_mask(design.kind, w, h), dtype=np.uint8)
    return rgb, mask


# --------------------------------------------------------------------------- scenes


def plain_background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A kiosk's view with nothing in it: a smooth, softly lit surface with sensor noise."""
    base = rng.integers(150, 215, 3).astype(np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    light = 0.85 + 0.15 * (xx / width) * 0.5 + 0.15 * (1 - yy / height) * 0.5
    img = base[None, None, :] * light[..., None] + rng.normal(0, 2.0, (height, width, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def cluttered_background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """An in-store scene: shelves, other boxes, price tags, blobs of colour."""
    img = Image.fromarray(plain_background(rng, width, height))
    draw = ImageDraw.Draw(img)
    for y in range(int(rng.integers(20, 60)), height, int(rng.integers(70, 130))):
        draw.rectangle((0, y, width, y + 8), fill=tuple(int(v) for v in rng.integers(60, 140, 3)))
    for _ in range(int(rng.integers(12, 24))):
        x, y = int(rng.integers(-20, width)), int(rng.integers(-20, height))
        w, h = int(rng.integers(15, 80)), int(rng.integers(20, 110))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.rectangle((x, y, x + w, y + h), fill=colour)
        else:
            draw.ellipse((x, y, x + w, y + h), fill=colour)
        if rng.random() < 0.3:
            draw.rectangle((x, y + h - 14, x + 34, y + h), fill=(255, 255, 250))
            draw.text((x + 2, y + h - 13), f"{rng.uniform(0.5, 9):.2f}", fill=(0, 0, 0), font=_font(10))
    return np.asarray(img, dtype=np.uint8).copy()


@dataclass(frozen=True)
class Pose:
    """How the product sits in the frame."""

    cx: float  # centre, fraction of frame width
    cy: float  # centre, fraction of frame height
    scale: float  # package height as a fraction of frame height
    roll: float = 0.0  # in-plane rotation, degrees
    yaw: float = 0.0  # turn about the vertical axis, degrees (perspective)
    pitch: float = 0.0  # tilt about the horizontal axis, degrees (perspective)


def _pose_corners(w: int, h: int, frame_w: int, frame_h: int, pose: Pose) -> np.ndarray:
    """Destination corners of the package face: a planar rotation seen by a pinhole camera."""
    s = pose.scale * frame_h / h
    pts = np.array([[-w / 2, -h / 2, 0], [w / 2, -h / 2, 0], [w / 2, h / 2, 0], [-w / 2, h / 2, 0]], np.float64) * s
    yaw, pitch, roll = (math.radians(a) for a in (pose.yaw, pose.pitch, pose.roll))
    ry = np.array([[math.cos(yaw), 0, math.sin(yaw)], [0, 1, 0], [-math.sin(yaw), 0, math.cos(yaw)]])
    rx = np.array([[1, 0, 0], [0, math.cos(pitch), -math.sin(pitch)], [0, math.sin(pitch), math.cos(pitch)]])
    rz = np.array([[math.cos(roll), -math.sin(roll), 0], [math.sin(roll), math.cos(roll), 0], [0, 0, 1]])
    pts = pts @ (rz @ rx @ ry).T
    focal = 1.3 * frame_h
    z = pts[:, 2] + focal
    x = pts[:, 0] * focal / z + pose.cx * frame_w
    y = pts[:, 1] * focal / z + pose.cy * frame_h
    return np.stack([x, y], axis=1).astype(np.float32)


def compose(background: np.ndarray, package: tuple[np.ndarray, np.ndarray], pose: Pose) -> np.ndarray:
    """Paste the package into `background` (a copy) under a perspective pose."""
    rgb, mask = package
    h, w = mask.shape
    frame_h, frame_w = background.shape[:2]
    src = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
    matrix = cv2.getPerspectiveTransform(src, _pose_corners(w, h, frame_w, frame_h, pose))
    warped = cv2.warpPerspective(rgb, matrix, (frame_w, frame_h), flags=cv2.INTER_LINEAR)
    alpha = cv2.warpPerspective(mask, matrix, (frame_w, frame_h), flags=cv2.INTER_LINEAR).astype(np.float32) / 255.0
    out = background.astype(np.float32) * (1 - alpha[..., None]) + warped.astype(np.float32) * alpha[..., None]
    return np.clip(out, 0, 255).astype(np.uint8)


def draw_hand(frame: np.ndarray, rng: np.random.Generator, pose: Pose, package_h: float) -> np.ndarray:
    """A skin-toned blob holding the package from below: partial occlusion as in real use."""
    img = Image.fromarray(frame)
    draw = ImageDraw.Draw(img)
    fh, fw = frame.shape[:2]
    cx, bottom = pose.cx * fw, pose.cy * fh + package_h / 2
    tone = tuple(int(v) for v in (np.array([205, 160, 130]) * rng.uniform(0.6, 1.05)))
    r = package_h * 0.16
    draw.ellipse((cx - r * 1.6, bottom - r * 0.8, cx + r * 0.6, bottom + r * 1.2), fill=tone)
    if bottom + r * 0.4 < fh:
        draw.rectangle((cx - r, bottom + r * 0.4, cx + r * 0.2, fh), fill=tone)
    return np.asarray(img, dtype=np.uint8).copy()


def photometric(rgb: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Other light, colour cast, blur and sensor noise."""
    img: np.ndarray = rgb.astype(np.float32)
    gain = 1.0 + strength * rng.uniform(-0.3, 0.25)
    cast = 1.0 + strength * rng.uniform(-0.08, 0.08, 3)
    img = img * gain * cast[None, None, :] + strength * rng.uniform(-20, 20)
    out: np.ndarray = np.clip(img, 0, 255).astype(np.uint8)
    sigma = strength * rng.uniform(0.0, 1.4)
    if sigma > 0.3:
        out = cv2.GaussianBlur(out, (0, 0), sigma)
    noise = rng.normal(0, 3.0 * strength, out.shape)
    return np.clip(out.astype(np.float32) + noise, 0, 255).astype(np.uint8)


def random_query_pose(rng: np.random.Generator) -> Pose:
    return Pose(
        cx=0.5 + rng.uniform(-0.08, 0.08),
        cy=0.5 + rng.uniform(-0.08, 0.08),
        scale=rng.uniform(0.5, 0.85),
        roll=rng.uniform(-25, 25),
        yaw=rng.uniform(-40, 40),
        pitch=rng.uniform(-25, 25),
    )


def render_reference(design: ProductDesign, view: int, size: int = 320) -> np.ndarray:
    """Catalog photo `view` of a product: front-on first, then small turns, on a plain studio background."""
    rng = np.random.default_rng([design.seed, view, 1])
    background = np.full((size, size, 3), 235, np.uint8)
    if view == 0:
        pose = Pose(0.5, 0.5, 0.9)
    else:
        # Turned clearly left or right (alternating), so each view adds information instead of a near-duplicate.
        side = 1.0 if view % 2 else -1.0
        pose = Pose(
            0.5,
            0.5,
            rng.uniform(0.78, 0.9),
            roll=rng.uniform(-6, 6),
            yaw=side * rng.uniform(22, 35),
            pitch=rng.uniform(-12, 12),
        )
    return compose(background, render_package(design), pose)


def render_query(design: ProductDesign, view: int, size: int = 384) -> np.ndarray:
    """A shopper's photo: the product held at an angle in a store, other light, some blur."""
    rng = np.random.default_rng([design.seed, view, 2])
    package = render_package(design)
    pose = random_query_pose(rng)
    frame = compose(cluttered_background(rng, size, size), package, pose)
    if rng.random() < 0.5:
        frame = draw_hand(frame, rng, pose, pose.scale * size)
    return photometric(frame, rng)


# --------------------------------------------------------------------------- files


def _save(rgb: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, quality=92)


def write_products_csv(designs: list[ProductDesign], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sku", "name", "description", "category", "price"])
        for d in designs:
            writer.writerow([d.sku, d.name, d.description, d.category, f"{d.price:.2f}"])


def generate_sample_set(
    out_dir: str | Path,
    n_products: int = 12,
    refs_per_product: int = 3,
    queries_per_product: int = 4,
    seed: int = 0,
) -> SampleSet:
    """Render the built-in product set into `out_dir` (catalog/, queries/, products.csv, designs.json).

    Deterministic for a given seed: rerunning overwrites the same files with
    the same pixels.
    """
    if refs_per_product < 1 or queries_per_product < 0:
        raise InputError("refs_per_product must be >= 1 and queries_per_product >= 0")
    root = Path(out_dir)
    designs = make_designs(n_products, seed)
    catalog_dir, queries_dir = root / "catalog", root / "queries"
    for d in designs:
        for v in range(refs_per_product):
            _save(render_reference(d, v), catalog_dir / d.sku / f"ref_{v}.jpg")
        for v in range(queries_per_product):
            _save(render_query(d, v), queries_dir / d.sku / f"query_{v}.jpg")
    products_csv = root / "products.csv"
    write_products_csv(designs, products_csv)
    manifest = {
        "samples_version": SAMPLES_VERSION,
        "seed": seed,
        "refs_per_product": refs_per_product,
        "queries_per_product": queries_per_product,
        "designs": [asdict(d) for d in designs],
    }
    (root / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1) + "\n")
    log.info(
        "sample set: %d products, %d refs and %d queries each -> %s",
        n_products,
        refs_per_product,
        queries_per_product,
        root,
    )
    return SampleSet(root, catalog_dir, queries_dir, products_csv, seed, n_products, tuple(designs))


def load_sample_set(root: str | Path, n_products: int = 12, seed: int = 0) -> SampleSet | None:
    """The set a previous `generate_sample_set` (same version, size and seed) left in `root`, with its clip; else None."""
    root = Path(root)
    try:
        manifest = json.loads((root / MANIFEST_NAME).read_text())
        designs = tuple(
            ProductDesign(**{**d, **{k: tuple(d[k]) for k in ("primary", "secondary", "accent")}})
            for d in manifest["designs"]
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if manifest.get("samples_version") != SAMPLES_VERSION or manifest.get("seed") != seed or len(designs) != n_products:
        return None
    if not (root / "clip.avi").is_file() or not (root / "clip.json").is_file():
        return None
    return SampleSet(root, root / "catalog", root / "queries", root / "products.csv", seed, n_products, designs)


# --------------------------------------------------------------------------- clip


def _smooth_path(rng: np.random.Generator, n: int, lo: float, hi: float) -> np.ndarray:
    """A slow, smooth wander between lo and hi over n frames (sum of two sines)."""
    t = np.linspace(0, 1, max(n, 1))
    f1, f2 = rng.uniform(0.4, 1.0), rng.uniform(1.0, 2.2)
    p1, p2 = rng.uniform(0, 2 * math.pi, 2)
    wave = 0.6 * np.sin(2 * math.pi * f1 * t + p1) + 0.4 * np.sin(2 * math.pi * f2 * t + p2)
    return lo + (hi - lo) * (wave + 1) / 2


def clip_frames(
    sample_set: SampleSet,
    seconds: float = 12.0,
    fps: float = 10.0,
    size: tuple[int, int] = (480, 360),
    product_seconds: float = 2.0,
    gap_seconds: float = 1.0,
) -> tuple[Iterator[np.ndarray], tuple[ClipSegment, ...]]:
    """Frames of products held in front of a kiosk camera, alternating with empty views, and the ground truth."""
    designs = list(sample_set.designs) or make_designs(sample_set.n_products, sample_set.seed)
    rng = np.random.default_rng([sample_set.seed, 3])
    segments: list[ClipSegment] = []
    t, k = 0.0, 0
    order = rng.permutation(len(designs))
    while t < seconds:
        gap_end = min(seconds, t + gap_seconds)
        segments.append(ClipSegment(round(t, 3), round(gap_end, 3), None))
        t = gap_end
        if t >= seconds:
            break
        end = min(seconds, t + product_seconds)
        segments.append(ClipSegment(round(t, 3), round(end, 3), designs[int(order[k % len(order)])].sku))
        t, k = end, k + 1
    by_sku = {d.sku: d for d in designs}
    width, height = size
    background = plain_background(rng, width, height)
    n_frames = int(round(seconds * fps))

    def frames() -> Iterator[np.ndarray]:
        frame_rng = np.random.default_rng([sample_set.seed, 4])
        packages: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for seg in segments:
            first, last = int(round(seg.start_s * fps)), min(n_frames, int(round(seg.end_s * fps)))
            count = last - first
            if seg.product_id is None:
                for _ in range(count):
                    yield photometric(background, frame_rng, strength=0.15)
                continue
            if seg.product_id not in packages:
                packages[seg.product_id] = render_package(by_sku[seg.product_id])
            path_rng = np.random.default_rng([sample_set.seed, first])
            yaw = _smooth_path(path_rng, count, -35, 35)
            pitch = _smooth_path(path_rng, count, -15, 15)
            roll = _smooth_path(path_rng, count, -15, 15)
            scale = _smooth_path(path_rng, count, 0.5, 0.8)
            cx = _smooth_path(path_rng, count, 0.45, 0.55)
            for i in range(count):
                pose = Pose(float(cx[i]), 0.5, float(scale[i]), float(roll[i]), float(yaw[i]), float(pitch[i]))
                frame = compose(background, packages[seg.product_id], pose)
                frame = draw_hand(frame, frame_rng, pose, pose.scale * height)
                yield photometric(frame, frame_rng, strength=0.3)

    return frames(), tuple(segments)


def generate_clip(
    out_path: str | Path,
    sample_set: SampleSet,
    seconds: float = 12.0,
    fps: float = 10.0,
    size: tuple[int, int] = (480, 360),
) -> Clip:
    """Write the kiosk clip as MJPG/AVI plus `<name>.json` with the ground-truth segments."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    frames, segments = clip_frames(sample_set, seconds, fps, size)
    writer = cv2.VideoWriter(str(out_path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)  # type: ignore[attr-defined]
    if not writer.isOpened():
        raise InputError(f"{out_path}: OpenCV cannot write an MJPG video here")
    try:
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    clip = Clip(out_path, fps, size, segments)
    out_path.with_suffix(".json").write_text(
        json.dumps({"fps": fps, "size": list(size), "segments": [asdict(s) for s in segments]}, indent=1) + "\n"
    )
    return clip


def load_clip_truth(path: str | Path) -> Clip:
    """Read the ground truth that `generate_clip` wrote next to the video."""
    path = Path(path)
    try:
        data = json.loads(path.with_suffix(".json").read_text())
        segments = tuple(ClipSegment(**s) for s in data["segments"])
        return Clip(path, float(data["fps"]), tuple(data["size"]), segments)  # type: ignore[arg-type]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: no readable ground truth next to the clip ({exc})") from exc
