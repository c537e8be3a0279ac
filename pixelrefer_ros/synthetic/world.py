"""The synthetic "shapes" world: short videos of coloured shapes with masks and ground truth.

A scene is a short clip (default 8 frames of 256x256 at 4 fps) of 1-4 flat-coloured shapes that
stand still or move in a straight line at constant speed over a textured, desaturated
background. Everything is drawn without anti-aliasing, so a pixel is either an object's colour
(plus the shared light noise) or background, and the per-object masks are exactly the visible
pixels of each object (objects are drawn in z-order; an occluded part belongs to the object on
top). Everything is a pure function of the seed: only a `numpy.random.Generator` is used.

Coordinates are pixels, x to the right and y down; a pixel's index is the coordinate of its
centre. Boxes are `(x0, y0, x1, y1)` with `x1`, `y1` exclusive. "up" means towards y = 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

import cv2
import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
# Saturated palette (RGB). Closest pair (red/orange, orange/yellow, ...) differs by >= 80 in one
# channel, far more than colour jitter + noise (<= 16); the background is desaturated and never
# brighter than 185, so it is never mistaken for any of these, white included.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (235, 215, 35),
    "green": (35, 170, 55),
    "cyan": (30, 200, 215),
    "blue": (35, 70, 225),
    "purple": (145, 55, 195),
    "white": (240, 240, 240),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
SIZES: tuple[str, ...] = ("small", "large")
MOTIONS: tuple[str, ...] = ("still", "left", "right", "up", "down")
DIRECTIONS: dict[str, tuple[int, int]] = {
    "still": (0, 0), "left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1),
}

_SHIFT = 4  # OpenCV fixed-point bits: shapes are placed with 1/16 px precision
_ONE = 1 << _SHIFT


def _star(points: int = 5, outer: float = 1.3, inner: float = 0.6) -> np.ndarray:
    angles = -np.pi / 2 + np.arange(2 * points) * np.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _cross(half_length: float = 1.15, half_width: float = 0.4) -> np.ndarray:
    a, b = half_length, half_width
    return np.array([(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b),
                     (b, a), (-b, a), (-b, b), (-a, b), (-a, -b), (-b, -b)], dtype=np.float64)


def _triangle(circumradius: float = 1.25) -> np.ndarray:
    angles = np.deg2rad([-90.0, 30.0, 150.0])  # pointing up
    return circumradius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


# Unit outlines (radius 1, centroid at the origin); sizes chosen so that all shapes of one
# radius have a similar area (circle pi, square 2.9, triangle 2.0, star 2.3, cross 3.0).
_UNIT_POLYGONS: dict[str, np.ndarray] = {
    "square": np.array([(-0.85, -0.85), (0.85, -0.85), (0.85, 0.85), (-0.85, 0.85)]),
    "triangle": _triangle(),
    "star": _star(),
    "cross": _cross(),
}
# Largest distance of a shape's outline from its centre, in radii.
SHAPE_EXTENT: dict[str, float] = {"circle": 1.0} | {
    name: float(np.linalg.norm(poly, axis=1).max()) for name, poly in _UNIT_POLYGONS.items()
}


@dataclass(frozen=True)
class WorldConfig:
    """Everything that shapes the distribution of scenes. Sizes in pixels, speeds in px/frame."""

    width: int = 256
    height: int = 256
    num_frames: int = 8
    fps: float = 4.0
    min_objects: int = 1
    max_objects: int = 4
    shapes: tuple[str, ...] = SHAPES  # the values the sampler draws from
    colors: tuple[str, ...] = COLOR_NAMES
    sizes: tuple[str, ...] = SIZES
    small_radius: tuple[float, float] = (14.0, 18.0)
    large_radius: tuple[float, float] = (32.0, 40.0)
    # Non-circles are turned by up to this much either way. 0 by default: the built-in model's
    # from-scratch ViT learnt shape about twice as fast on upright shapes (models/shapes).
    max_rotation_deg: float = 0.0
    p_still: float = 0.4  # else one of left/right/up/down, equally likely
    speed: tuple[float, float] = (4.0, 8.0)
    p_occlusion: float = 0.3  # chance that a scene places two objects so that they overlap
    p_exit: float = 0.2  # chance that a moving object starts or ends partly out of the frame
    min_visible_fraction: float = 0.3  # of the object's full area, in every frame
    min_relation_dx: float = 40.0  # centroid x gap below which "left of" is ambiguous
    color_jitter: int = 10  # per-object, per-channel offset from the palette colour
    noise_amplitude: int = 6  # per-pixel uniform noise in [-a, a], on objects and background
    background_range: tuple[int, int] = (20, 185)
    background_lines: tuple[int, int] = (3, 8)
    background_blobs: tuple[int, int] = (2, 6)
    max_attempts: int = 40  # placement attempts before an object is dropped

    def __post_init__(self) -> None:
        checks = [
            (224 <= self.width <= 320 and 224 <= self.height <= 320,
             "width and height must lie in [224, 320]"),
            (1 <= self.num_frames <= 16, "num_frames must lie in [1, 16]"),
            (1 <= self.min_objects <= self.max_objects <= 4, "need 1 <= min_objects <= max <= 4"),
            (self.fps > 0, "fps must be positive"),
            (bool(self.shapes) and set(self.shapes) <= set(SHAPES), f"shapes must be in {SHAPES}"),
            (bool(self.colors) and set(self.colors) <= set(COLORS), f"colors must be in {COLORS}"),
            (bool(self.sizes) and set(self.sizes) <= set(SIZES), f"sizes must be in {SIZES}"),
            (0 < self.small_radius[0] <= self.small_radius[1] < self.large_radius[0]
             <= self.large_radius[1] <= 40, "radii: small < large <= 40"),
            (0 < self.speed[0] <= self.speed[1], "bad speed range"),
            (0 <= self.noise_amplitude <= 20 and 0 <= self.color_jitter <= 20, "noise too strong"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"WorldConfig: {message}")

    def radius_range(self, size: str) -> tuple[float, float]:
        return self.small_radius if size == "small" else self.large_radius


@dataclass(frozen=True)
class ObjectSpec:
    """A requested object for `generate_scene(objects=...)`; None fields are sampled."""

    shape: str | None = None
    color: str | None = None
    size: str | None = None
    motion: str | None = None


@dataclass(frozen=True)
class ObjectState:
    """Ground truth of one object in one frame."""

    id: int
    shape: str
    color: str
    size: str
    motion: str
    timestamp: float
    center: tuple[float, float]  # where the shape is drawn (x, y), possibly occluded / cut off
    centroid: tuple[float, float]  # mean (x, y) of the visible pixels
    bbox: tuple[int, int, int, int]  # box of the visible pixels, (x0, y0, x1, y1) exclusive
    visible_area: int  # pixels in the mask
    in_frame_area: int  # pixels the object would have if nothing covered it
    full_area: int  # pixels the object would have on an unbounded canvas

    @property
    def occluded(self) -> bool:
        return self.visible_area < self.in_frame_area

    @property
    def truncated(self) -> bool:
        return self.in_frame_area < self.full_area


@dataclass(eq=False)
class SceneObject:
    """Ground truth of one object over the clip; arrays are indexed by frame."""

    id: int  # index into Scene.objects and the object axis of Scene.masks
    shape: str
    color: str
    size: str
    motion: str
    radius: float
    speed: float  # px/frame along the motion direction (0 when still)
    rotation: float  # degrees, counter-clockwise on screen
    rgb: tuple[int, int, int]  # the drawn colour (palette colour + jitter), before noise
    z: int  # drawing order: 0 is drawn first (bottom)
    centers: np.ndarray  # [T, 2] float (x, y)
    centroids: np.ndarray  # [T, 2] float (x, y) of the visible pixels
    bboxes: np.ndarray  # [T, 4] int (x0, y0, x1, y1) of the visible pixels
    visible_area: np.ndarray  # [T] int
    in_frame_area: np.ndarray  # [T] int
    full_area: np.ndarray  # [T] int

    @property
    def velocity(self) -> tuple[float, float]:
        dx, dy = DIRECTIONS[self.motion]
        return dx * self.speed, dy * self.speed

    @property
    def spec(self) -> ObjectSpec:
        return ObjectSpec(self.shape, self.color, self.size, self.motion)

    def sprite(self, t: int) -> Sprite:
        x, y = self.centers[t]
        return Sprite(self.shape, (float(x), float(y)), self.radius, self.rotation, self.rgb)


@dataclass(eq=False)
class Scene:
    """One generated clip. `masks[t, i]` is object i's visible part in frame t (uint8 0/1)."""

    seed: int
    config: WorldConfig
    frames: np.ndarray  # [T, H, W, 3] uint8 RGB
    masks: np.ndarray  # [T, O, H, W] uint8 0/1, disjoint across objects
    timestamps: np.ndarray  # [T] float64 seconds, i / fps
    objects: list[SceneObject]
    background: np.ndarray  # [H, W, 3] uint8, the noise-free backdrop
    # relations[t, i, j]: 1 if i is left of j, 0 if i is right of j, -1 if ambiguous (the
    # visible centroids' x differ by less than config.min_relation_dx, or i == j)
    relations: np.ndarray  # [T, O, O] int8

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def num_objects(self) -> int:
        return len(self.objects)

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])

    def left_of(self, i: int, j: int, t: int) -> bool | None:
        """Is object i left of object j in frame t? None when the answer is ambiguous."""
        r = int(self.relations[t, i, j])
        return None if r < 0 else bool(r)

    def state(self, obj_id: int, t: int) -> ObjectState:
        o = self.objects[obj_id]
        cx, cy = o.centers[t]
        gx, gy = o.centroids[t]
        return ObjectState(
            id=o.id, shape=o.shape, color=o.color, size=o.size, motion=o.motion,
            timestamp=float(self.timestamps[t]), center=(float(cx), float(cy)),
            centroid=(float(gx), float(gy)), bbox=tuple(int(v) for v in o.bboxes[t]),
            visible_area=int(o.visible_area[t]), in_frame_area=int(o.in_frame_area[t]),
            full_area=int(o.full_area[t]),
        )

    def states(self, t: int) -> list[ObjectState]:
        return [self.state(i, t) for i in range(self.num_objects)]


@dataclass(frozen=True)
class Sprite:
    """One shape to draw with `render_frame`."""

    shape: str
    center: tuple[float, float]
    radius: float
    rotation: float = 0.0
    rgb: tuple[int, int, int] = (255, 255, 255)


# --------------------------------------------------------------------------------- drawing


@dataclass
class _Raster:
    """One shape drawn alone on a small canvas whose top-left pixel is (x0, y0) of the frame."""

    x0: int
    y0: int
    canvas: np.ndarray  # uint8 0/1, square
    points: np.ndarray | None  # polygon in frame coordinates, fixed point (None for circles)
    circle: tuple[int, int, int]  # (cx, cy, r) in frame coordinates, fixed point

    def draw(self, image: np.ndarray, color: tuple[int, ...] | int) -> None:
        """Draw the same pixels as `canvas` into a frame-sized image (exact when unclipped)."""
        if self.points is None:
            cx, cy, r = self.circle
            cv2.circle(image, (cx, cy), r, color, -1, cv2.LINE_8, _SHIFT)
        else:
            cv2.fillPoly(image, [self.points], color, cv2.LINE_8, _SHIFT)


@dataclass
class _Window:
    """Where one raster lands in a frame: its frame-clipped box and its visible pixels there."""

    raster: _Raster
    y0: int
    y1: int
    x0: int
    x1: int
    crop: np.ndarray  # bool [y1 - y0, x1 - x0]: the shape's pixels in the box
    visible: np.ndarray  # bool [y1 - y0, x1 - x0]: those that nothing drawn later covers
    inside: bool  # the whole canvas lies inside the frame
    in_frame_area: int
    full_area: int


def _unit_outline(shape: str, rotation_deg: float) -> np.ndarray | None:
    if shape == "circle":
        return None
    a = math.radians(rotation_deg)
    rot = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
    return _UNIT_POLYGONS[shape] @ rot.T


def _rasterize(shape: str, outline: np.ndarray | None, cx: float, cy: float,
               radius: float) -> _Raster:
    """Draw one shape alone on a canvas just big enough for it (no anti-aliasing)."""
    e = math.ceil(radius * SHAPE_EXTENT[shape]) + 2
    x0, y0 = math.floor(cx) - e, math.floor(cy) - e
    canvas = np.zeros((2 * e + 2, 2 * e + 2), np.uint8)
    lx, ly = cx - x0, cy - y0
    offset = np.array([x0 * _ONE, y0 * _ONE], np.int32)
    if outline is None:
        circle = (round(lx * _ONE), round(ly * _ONE), round(radius * _ONE))
        cv2.circle(canvas, circle[:2], circle[2], 1, -1, cv2.LINE_8, _SHIFT)
        return _Raster(x0, y0, canvas, None,
                       (circle[0] + x0 * _ONE, circle[1] + y0 * _ONE, circle[2]))
    pts = np.round((outline * radius + (lx, ly)) * _ONE).astype(np.int32)
    cv2.fillPoly(canvas, [pts], 1, cv2.LINE_8, _SHIFT)
    return _Raster(x0, y0, canvas, pts + offset, (0, 0, 0))


def _compose(rasters: Sequence[_Raster], h: int, w: int) -> list[_Window | None]:
    """Stack rasters bottom-to-top; each keeps only the pixels nothing later covers."""
    label = np.full((h, w), 255, np.uint8)
    windows: list[_Window | None] = []
    for k, r in enumerate(rasters):
        s = r.canvas.shape[0]
        fx0, fy0 = max(r.x0, 0), max(r.y0, 0)
        fx1, fy1 = min(r.x0 + s, w), min(r.y0 + s, h)
        if fx0 >= fx1 or fy0 >= fy1:
            windows.append(None)
            continue
        crop = r.canvas[fy0 - r.y0:fy1 - r.y0, fx0 - r.x0:fx1 - r.x0].view(bool)
        label[fy0:fy1, fx0:fx1][crop] = k
        inside = fx0 == r.x0 and fy0 == r.y0 and fx1 == r.x0 + s and fy1 == r.y0 + s
        windows.append(_Window(r, fy0, fy1, fx0, fx1, crop, crop, inside,
                               int(np.count_nonzero(crop)), int(np.count_nonzero(r.canvas))))
    for k, win in enumerate(windows):
        if win is not None:
            win.visible = label[win.y0:win.y1, win.x0:win.x1] == k
    return windows


def _paint(background: np.ndarray, windows: Sequence[_Window | None],
           rgbs: Sequence[tuple[int, int, int]], noise_pos: np.ndarray | None,
           noise_neg: np.ndarray | None) -> np.ndarray:
    """Paint the windows bottom-to-top over a copy of the background, then add the noise."""
    frame = background.copy()
    for win, rgb in zip(windows, rgbs, strict=True):
        if win is None:
            continue
        if win.inside:  # same pixels as the canvas, much faster than a masked assignment
            win.raster.draw(frame, rgb)
        else:
            frame[win.y0:win.y1, win.x0:win.x1][win.crop] = rgb
    if noise_pos is not None and noise_neg is not None:
        cv2.add(frame, noise_pos, dst=frame)  # saturating uint8 arithmetic
        cv2.subtract(frame, noise_neg, dst=frame)
    return frame


def render_frame(background: np.ndarray, sprites: Sequence[Sprite],
                 noise: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Draw `sprites` (bottom first) over `background` [H, W, 3] uint8.

    `noise` is an optional signed integer array [H, W, 3] added to every pixel (clipped).
    Returns the RGB frame [H, W, 3] uint8 and the visible masks [N, H, W] uint8 0/1 in sprite
    order. This is the same drawing code `generate_scene` uses.
    """
    h, w = background.shape[:2]
    rasters = [_rasterize(s.shape, _unit_outline(s.shape, s.rotation), s.center[0], s.center[1],
                          s.radius) for s in sprites]
    windows = _compose(rasters, h, w)
    pos = neg = None
    if noise is not None:
        n = np.clip(noise, -255, 255).astype(np.int16)
        pos, neg = np.maximum(n, 0).astype(np.uint8), np.maximum(-n, 0).astype(np.uint8)
    frame = _paint(background, windows, [s.rgb for s in sprites], pos, neg)
    masks = np.zeros((len(sprites), h, w), np.uint8)
    for k, win in enumerate(windows):
        if win is not None:
            masks[k, win.y0:win.y1, win.x0:win.x1] = win.visible
    return frame, masks


def _grey_tint(rng: np.random.Generator, amount: float) -> np.ndarray:
    """A small zero-mean RGB offset: keeps background colours close to grey."""
    v = rng.standard_normal(3)
    v -= v.mean()
    return v / (np.linalg.norm(v) + 1e-9) * rng.uniform(0.0, amount)


def make_background(rng: np.random.Generator, height: int, width: int,
                    cfg: WorldConfig) -> np.ndarray:
    """Smooth desaturated gradient, mottling and soft blobs, plus faint lines; [H, W, 3] uint8.

    The smooth part is built at 1/4 resolution and upsampled (cheap); colours stay within a
    small tint of grey and inside cfg.background_range, far from every palette colour.
    """
    lw, lh = max(width // 4, 8), max(height // 4, 8)
    grey = rng.uniform(60.0, 140.0)
    tint = _grey_tint(rng, 14.0)
    corners = (grey + tint + rng.uniform(-35.0, 35.0, (3, 3, 1))
               + rng.uniform(-5.0, 5.0, (3, 3, 3))).astype(np.float32)
    low = cv2.resize(corners, (lw, lh), interpolation=cv2.INTER_CUBIC)
    mottle = rng.uniform(-16.0, 16.0, (8, 8, 1)).repeat(3, axis=2).astype(np.float32)
    low += cv2.resize(mottle, (lw, lh), interpolation=cv2.INTER_CUBIC)
    blobs = low.copy()
    for _ in range(int(rng.integers(cfg.background_blobs[0], cfg.background_blobs[1] + 1))):
        c = rng.uniform(0.0, 1.0, 2) * (lw, lh)
        axes = rng.uniform(2.5, 12.5, 2)
        colour = grey + rng.uniform(-40.0, 40.0) + _grey_tint(rng, 12.0)
        cv2.ellipse(blobs, (int(c[0]), int(c[1])), (int(axes[0]), int(axes[1])),
                    float(rng.uniform(0.0, 180.0)), 0.0, 360.0, tuple(float(v) for v in colour), -1)
    low = cv2.addWeighted(low, 0.65, cv2.GaussianBlur(blobs, (0, 0), 1.0), 0.35, 0.0)
    lo, hi = cfg.background_range
    low = np.clip(low, lo + 8, hi - 8).astype(np.uint8)
    bg = cv2.resize(low, (width, height), interpolation=cv2.INTER_LINEAR)
    for _ in range(int(rng.integers(cfg.background_lines[0], cfg.background_lines[1] + 1))):
        p, q = rng.uniform(-0.2, 1.2, (2, 2)) * (width, height)
        colour = np.clip(grey + rng.uniform(-20.0, 20.0) + _grey_tint(rng, 6.0), lo, hi)
        cv2.line(bg, (int(p[0]), int(p[1])), (int(q[0]), int(q[1])),
                 tuple(int(c) for c in colour), int(rng.integers(1, 3)), cv2.LINE_AA)
    return bg


# ------------------------------------------------------------------------------ placement


@dataclass
class _Proto:
    shape: str
    color: str
    size: str
    motion: str
    radius: float
    speed: float
    rotation: float
    rgb: tuple[int, int, int]

    @property
    def extent(self) -> float:
        return self.radius * SHAPE_EXTENT[self.shape]

    @property
    def velocity(self) -> np.ndarray:
        return np.array(DIRECTIONS[self.motion], np.float64) * self.speed


def _pick(rng: np.random.Generator, requested: str | None, allowed: Sequence[str],
          vocabulary: Sequence[str], what: str) -> str:
    if requested is None:
        return allowed[int(rng.integers(len(allowed)))]
    if requested not in vocabulary:
        raise ValueError(f"unknown {what} {requested!r}; expected one of {tuple(vocabulary)}")
    return requested


def _sample_proto(rng: np.random.Generator, cfg: WorldConfig, req: ObjectSpec) -> _Proto:
    shape = _pick(rng, req.shape, cfg.shapes, SHAPES, "shape")
    color = _pick(rng, req.color, cfg.colors, COLOR_NAMES, "color")
    size = _pick(rng, req.size, cfg.sizes, SIZES, "size")
    if req.motion is not None:
        motion = _pick(rng, req.motion, MOTIONS, MOTIONS, "motion")
        if cfg.num_frames == 1 and motion != "still":
            raise ValueError("a single-frame scene cannot show motion")
    elif cfg.num_frames == 1 or rng.random() < cfg.p_still:
        motion = "still"
    else:
        motion = MOTIONS[1 + int(rng.integers(4))]
    radius = float(rng.uniform(*cfg.radius_range(size)))
    speed = 0.0 if motion == "still" else float(rng.uniform(*cfg.speed))
    if motion != "still":  # keep the whole trajectory placeable inside the frame
        length = cfg.width if motion in ("left", "right") else cfg.height
        margin = radius * SHAPE_EXTENT[shape] + 1.0
        speed = min(speed, 0.95 * (length - 2 * margin) / (cfg.num_frames - 1))
    rotation = 0.0 if shape == "circle" else float(rng.uniform(-1, 1) * cfg.max_rotation_deg)
    jitter = rng.integers(-cfg.color_jitter, cfg.color_jitter + 1, 3)
    rgb = tuple(int(v) for v in np.clip(np.array(COLORS[color]) + jitter, 0, 255))
    return _Proto(shape, color, size, motion, radius, speed, rotation, rgb)


def _free_intervals(lo: float, hi: float, taken: Sequence[float], gap: float
                    ) -> list[tuple[float, float]]:
    intervals = [(lo, hi)]
    for x in taken:
        nxt = []
        for a, b in intervals:
            if a < x - gap:
                nxt.append((a, min(b, x - gap)))
            if b > x + gap:
                nxt.append((max(a, x + gap), b))
        intervals = nxt
    return [(a, b) for a, b in intervals if b > a]


def _place(rng: np.random.Generator, protos: Sequence[_Proto], cfg: WorldConfig,
           occlusion: tuple[int, int] | None, exit_plan: tuple[int, bool] | None,
           level: int) -> np.ndarray | None:
    """Centres [O, T, 2] for all objects, or None if this attempt failed.

    level 0: frame-0 centre x of every pair differs by >= min_relation_dx and no two objects
    ever overlap (except the planned occlusion pair); level 1: only no overlap; level 2: any.
    """
    n, steps = len(protos), cfg.num_frames
    size = np.array([cfg.width, cfg.height], np.float64)
    t = np.arange(steps, dtype=np.float64)[:, None]
    centers = np.zeros((n, steps, 2))
    order = list(range(n))
    if occlusion is not None:  # the partner is placed right after the object it overlaps
        order.remove(occlusion[1])
        order.insert(order.index(occlusion[0]) + 1, occlusion[1])
    extents = np.array([p.extent for p in protos])
    placed: list[int] = []
    for i in order:
        p = protos[i]
        v, m = p.velocity, p.extent + 1.0
        travel = v * (steps - 1)
        lo, hi = m - np.minimum(travel, 0.0), size - m - np.maximum(travel, 0.0)
        partner = occlusion[0] if occlusion is not None and i == occlusion[1] else None
        others = [j for j in placed if j != partner]  # objects this one must keep away from
        others_x0 = centers[others, 0, 0]
        others_traj = centers[others]
        min_dist = extents[others] + p.extent + 1.0
        exiting = exit_plan is not None and exit_plan[0] == i
        x_fixed = partner is not None or (exiting and p.motion in ("left", "right"))
        free: list[tuple[float, float]] = []
        if level == 0 and others and not x_fixed:  # sample x away from the others' x
            free = _free_intervals(lo[0], hi[0], others_x0.tolist(), cfg.min_relation_dx)
            if not free:
                return None
        for _ in range(10):
            start = rng.uniform(lo, hi)
            if exiting:
                axis = 0 if p.motion in ("left", "right") else 1
                inset = rng.uniform(0.1, 0.6) * p.extent  # centre's distance from the border
                if exit_plan[1]:  # leaves through the border it moves towards
                    end = size[axis] - inset if travel[axis] > 0 else inset
                    start[axis] = end - travel[axis]
                else:  # comes in through the border behind it
                    start[axis] = inset if travel[axis] > 0 else size[axis] - inset
            elif partner is not None:
                when = int(rng.integers(steps))
                angle = rng.uniform(0.0, 2 * np.pi)
                dist = rng.uniform(0.35, 0.75) * (p.extent + extents[partner])
                start = centers[partner, when] + dist * np.array([np.cos(angle), np.sin(angle)])
                start -= v * when
                end = start + travel
                if np.any(np.minimum(start, end) < m) or np.any(np.maximum(start, end) > size - m):
                    continue
            if free:
                u = rng.uniform(0.0, sum(b - a for a, b in free))
                for a, b in free:
                    if u <= b - a:
                        start[0] = a + u
                        break
                    u -= b - a
            elif level == 0 and others and np.any(np.abs(others_x0 - start[0])
                                                  < cfg.min_relation_dx):
                continue
            traj = start + v * t
            if level <= 1 and others:
                gap = np.sqrt(((others_traj - traj) ** 2).sum(-1)).min(-1)
                if np.any(gap < min_dist):
                    continue
            centers[i] = traj
            placed.append(i)
            break
        else:
            return None
    return centers


# ----------------------------------------------------------------------------- generation


def generate_scene(seed: int, cfg: WorldConfig = WorldConfig(),
                   objects: Sequence[ObjectSpec | Mapping[str, str]] | None = None) -> Scene:
    """Generate one clip, a pure function of (seed, cfg, objects).

    `objects` optionally fixes the object list (its length and any attributes given); otherwise
    cfg.min_objects..cfg.max_objects objects with sampled attributes. Placement is by rejection:
    first with every pair's frame-0 centre x at least cfg.min_relation_dx apart and no overlaps
    but the planned occlusion, then without the x spacing, then allowing any overlap; always
    with every object showing >= cfg.min_visible_fraction of itself in every frame. A sampled
    object list that cannot be placed loses its last object (rare, crowded 16-frame clips).
    """
    rng = np.random.default_rng(seed)
    h, w, steps = cfg.height, cfg.width, cfg.num_frames
    if objects is not None:
        if not 1 <= len(objects) <= 4:
            raise ValueError("a scene holds 1 to 4 objects")
        requests = [o if isinstance(o, ObjectSpec) else ObjectSpec(**o) for o in objects]
    else:
        count = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
        requests = [ObjectSpec()] * count
    protos = [_sample_proto(rng, cfg, r) for r in requests]
    background = make_background(rng, h, w, cfg)

    while True:
        n = len(protos)
        z_of = rng.permutation(n)  # z_of[i]: drawing rank of object i
        draw_order = np.argsort(z_of)
        moving = [i for i, p in enumerate(protos) if p.motion != "still"]
        exit_plan = None
        if moving and rng.random() < cfg.p_exit:
            exit_plan = (moving[int(rng.integers(len(moving)))], bool(rng.random() < 0.5))
        occlusion = None
        if n >= 2 and rng.random() < cfg.p_occlusion:
            a, b = (int(k) for k in rng.choice(n, 2, replace=False))
            if exit_plan is not None and b == exit_plan[0]:
                a, b = b, a
            occlusion = (a, b)
        windows = None
        for attempt in range(cfg.max_attempts):
            level = 0 if attempt < 6 else 1 if attempt < 12 else 2
            centers = _place(rng, protos, cfg, occlusion, exit_plan, level)
            if centers is None:
                continue
            windows = _layout(protos, centers, draw_order, h, w, cfg.min_visible_fraction)
            if windows is not None:
                break
        if windows is not None:
            break
        if objects is not None:
            raise RuntimeError(f"cannot place the requested objects (seed {seed})")
        protos = protos[:-1]  # too crowded: drop an object and try again

    noise_pos, noise_neg = _noise_tables(cfg.noise_amplitude)
    offsets = rng.integers(0, _NOISE_PAD + 1, (steps, 2))

    n = len(protos)
    frames = np.empty((steps, h, w, 3), np.uint8)
    masks = np.zeros((steps, n, h, w), np.uint8)
    centroids = np.full((n, steps, 2), np.nan)
    bboxes = np.zeros((n, steps, 4), np.int64)
    areas = np.zeros((3, n, steps), np.int64)  # visible, in-frame, full
    for t in range(steps):
        wins = windows[t]
        oy, ox = offsets[t]
        frames[t] = _paint(background, wins, [protos[i].rgb for i in draw_order],
                           noise_pos[oy:oy + h, ox:ox + w], noise_neg[oy:oy + h, ox:ox + w])
        for k, i in enumerate(draw_order):
            win = wins[k]
            if win is None:
                continue
            vis = win.visible.view(np.uint8)
            masks[t, i, win.y0:win.y1, win.x0:win.x1] = vis
            m = cv2.moments(vis, binaryImage=True)
            areas[:, i, t] = (round(m["m00"]), win.in_frame_area, win.full_area)
            if m["m00"] > 0:
                centroids[i, t] = (m["m10"] / m["m00"] + win.x0, m["m01"] / m["m00"] + win.y0)
                bx, by, bw, bh = cv2.boundingRect(vis)
                bboxes[i, t] = (bx + win.x0, by + win.y0, bx + bw + win.x0, by + bh + win.y0)

    scene_objects = [
        SceneObject(id=i, shape=p.shape, color=p.color, size=p.size, motion=p.motion,
                    radius=p.radius, speed=p.speed, rotation=p.rotation, rgb=p.rgb,
                    z=int(z_of[i]), centers=centers[i], centroids=centroids[i], bboxes=bboxes[i],
                    visible_area=areas[0, i], in_frame_area=areas[1, i], full_area=areas[2, i])
        for i, p in enumerate(protos)
    ]
    return Scene(seed=seed, config=cfg, frames=frames, masks=masks,
                 timestamps=np.arange(steps, dtype=np.float64) / cfg.fps,
                 objects=scene_objects, background=background,
                 relations=_relations(centroids, cfg.min_relation_dx))


_NOISE_PAD = 128
_NOISE_CACHE: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _noise_tables(amplitude: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed table of uniform noise in [-a, a], as (positive part, negative part) uint8.

    Scenes take random crops of it (one per frame); drawing fresh noise per scene would cost
    more than the rest of the generation. Built once from a fixed seed, so still deterministic.
    """
    if amplitude not in _NOISE_CACHE:
        side = 320 + _NOISE_PAD
        noise = np.random.default_rng(0x5EED).integers(-amplitude, amplitude + 1, (side, side, 3))
        _NOISE_CACHE[amplitude] = (np.maximum(noise, 0).astype(np.uint8),
                                   np.maximum(-noise, 0).astype(np.uint8))
    return _NOISE_CACHE[amplitude]


def _layout(protos: Sequence[_Proto], centers: np.ndarray, draw_order: np.ndarray,
            h: int, w: int, min_visible: float) -> list[list[_Window | None]] | None:
    """Per frame, the composed windows of all objects in drawing order; None as soon as some
    object shows less than `min_visible` of its area in some frame."""
    outlines = [_unit_outline(p.shape, p.rotation) for p in protos]
    per_frame = []
    for t in range(centers.shape[1]):
        rasters = [_rasterize(protos[i].shape, outlines[i], centers[i, t, 0], centers[i, t, 1],
                              protos[i].radius) for i in draw_order]
        windows = _compose(rasters, h, w)
        for win in windows:
            if win is None or np.count_nonzero(win.visible) < min_visible * win.full_area:
                return None
        per_frame.append(windows)
    return per_frame


def _relations(centroids: np.ndarray, min_dx: float) -> np.ndarray:
    x = centroids[:, :, 0].T  # [T, O]
    dx = x[:, None, :] - x[:, :, None]  # dx[t, i, j] = x_j - x_i
    rel = np.full(dx.shape, -1, np.int8)
    rel[dx >= min_dx] = 1
    rel[dx <= -min_dx] = 0
    return rel


# --------------------------------------------------------------------------------- stream


@dataclass
class StreamFrame:
    """One frame of a `SceneStream`, resized to the stream's output size."""

    image: np.ndarray  # [h, w, 3] uint8 RGB
    masks: np.ndarray  # [O, h, w] uint8 0/1
    objects: list[SceneObject]  # ground truth in scene pixels (multiply by `scale`)
    scale: tuple[float, float]  # (sx, sy): output pixels per scene pixel
    scene_seed: int
    frame_index: int  # within the scene
    index: int  # since the stream started
    stamp: float  # seconds since the stream started, index / fps


class SceneStream(Iterator[StreamFrame]):
    """Endless frames for a camera node: scene `seed`, then `seed + 1`, ... back to back.

    `size=(width, height)` may be anything; scenes are generated at the nearest allowed size of
    the same aspect ratio and resized (masks with nearest neighbour, so they stay 0/1).
    """

    def __init__(self, seed: int = 0, cfg: WorldConfig = WorldConfig(),
                 size: tuple[int, int] | None = None) -> None:
        self.out_size = (cfg.width, cfg.height) if size is None else (int(size[0]), int(size[1]))
        if min(self.out_size) < 1:
            raise ValueError(f"bad output size {size}")
        ow, oh = self.out_size
        # the largest allowed generation size of the same aspect ratio (1.0 when in range)
        scale = min(max(1.0, 224 / ow, 224 / oh), 320 / ow, 320 / oh)
        gw = int(np.clip(round(ow * scale), 224, 320))
        gh = int(np.clip(round(oh * scale), 224, 320))
        self.cfg = replace(cfg, width=gw, height=gh)
        self.seed = seed
        self._k = 0
        self._t = 0
        self._index = 0
        self._scene: Scene | None = None

    @property
    def scene(self) -> Scene:
        if self._scene is None:
            self._scene = generate_scene(self.seed + self._k, self.cfg)
        return self._scene

    def __next__(self) -> StreamFrame:
        scene = self.scene
        t = self._t
        ow, oh = self.out_size
        image, masks = scene.frames[t], scene.masks[t]
        if (ow, oh) != (scene.width, scene.height):
            image = cv2.resize(image, (ow, oh), interpolation=cv2.INTER_LINEAR)
            masks = np.stack([cv2.resize(m, (ow, oh), interpolation=cv2.INTER_NEAREST)
                              for m in masks])
        out = StreamFrame(image=image, masks=masks, objects=scene.objects,
                          scale=(ow / scene.width, oh / scene.height), scene_seed=scene.seed,
                          frame_index=t, index=self._index, stamp=self._index / self.cfg.fps)
        self._index += 1
        self._t += 1
        if self._t == scene.num_frames:
            self._t, self._k, self._scene = 0, self._k + 1, None
        return out
