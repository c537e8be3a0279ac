"""ROS messages <-> numpy, without cv_bridge (no model knowledge here).

Images come out as contiguous RGB uint8 [H, W, 3]; region prompts as uint8 0/1 masks [H, W].
Everything that cannot be converted raises `ConversionError` (a ValueError) whose message names
the problem, e.g. the encoding and the supported list, or "mask is 64x48 but image is 640x480".
Outgoing `data` fields are always `array.array('B', ...)`: assigning bytes or lists goes through
a slow per-element check in the generated setter (toolchain §2.4).
"""

from __future__ import annotations

import array
import io
import math
import warnings
from collections.abc import Sequence

import cv2
import numpy as np
import PIL.Image
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from pixelrefer_ros.model.config import PreprocessConfig
from pixelrefer_ros.model.preprocess import crop_patches
from pixelrefer_ros_interfaces.msg import RegionPrompt

NS = 1_000_000_000
DEFAULT_MAX_PIXELS = 4096 * 4096


class ConversionError(ValueError):
    """A message that cannot be turned into an image or a mask; the text says why."""


# encoding -> (bytes per pixel, channels of the reshaped array, cv2 code to RGB or None).
# 8-bit data has no byte order, so `is_bigendian` is irrelevant for all of these. ROS names:
# "yuv422" is UYVY and "yuv422_yuy2" is YUYV (sensor_msgs image_encodings); the newer names
# "uyvy" and "yuyv" mean the same layouts. 4:2:2 data carries 2 bytes per pixel.
_DECODE: dict[str, tuple[int, int, int | None]] = {
    "rgb8": (3, 3, None),
    "bgr8": (3, 3, cv2.COLOR_BGR2RGB),
    "rgba8": (4, 4, cv2.COLOR_RGBA2RGB),
    "bgra8": (4, 4, cv2.COLOR_BGRA2RGB),
    "mono8": (1, 1, cv2.COLOR_GRAY2RGB),
    "8UC1": (1, 1, cv2.COLOR_GRAY2RGB),
    "yuyv": (2, 2, cv2.COLOR_YUV2RGB_YUY2),
    "yuv422_yuy2": (2, 2, cv2.COLOR_YUV2RGB_YUY2),
    "uyvy": (2, 2, cv2.COLOR_YUV2RGB_UYVY),
    "yuv422": (2, 2, cv2.COLOR_YUV2RGB_UYVY),
}
_ENCODE: dict[str, int | None] = {
    "rgb8": None, "bgr8": cv2.COLOR_RGB2BGR, "rgba8": cv2.COLOR_RGB2RGBA,
    "bgra8": cv2.COLOR_RGB2BGRA, "mono8": cv2.COLOR_RGB2GRAY, "8UC1": cv2.COLOR_RGB2GRAY,
    "yuyv": cv2.COLOR_RGB2YUV_YUY2, "yuv422_yuy2": cv2.COLOR_RGB2YUV_YUY2,
    "uyvy": cv2.COLOR_RGB2YUV_UYVY, "yuv422": cv2.COLOR_RGB2YUV_UYVY,
}
SUPPORTED_ENCODINGS: tuple[str, ...] = tuple(_DECODE)
MASK_ENCODINGS = ("mono8", "8UC1")
_COORD_LIMIT = 1 << 20  # polygon vertices are clamped here so cv2's fixed point cannot overflow


# ------------------------------------------------------------------------------------ stamps
def stamp_to_ns(stamp: Time) -> int:
    return int(stamp.sec) * NS + int(stamp.nanosec)


def ns_to_stamp(ns: int) -> Time:
    sec, nanosec = divmod(int(ns), NS)
    return Time(sec=sec, nanosec=nanosec)


# ------------------------------------------------------------------------------ msg -> numpy
def _as_bytes(data: object) -> np.ndarray:
    if isinstance(data, array.array | bytes | bytearray | memoryview):
        return np.frombuffer(data, np.uint8)
    return np.asarray(data, dtype=np.uint8).reshape(-1)  # a list (unusual, but legal)


def _pixels(msg: Image, bytes_per_pixel: int, what: str) -> np.ndarray:
    """The [H, W * bpp] pixel bytes of an 8-bit image message, `step` padding removed."""
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    row = w * bytes_per_pixel
    if step < row:
        raise ConversionError(f"{what}: step {step} is smaller than width*bytes_per_pixel = "
                              f"{w}*{bytes_per_pixel} = {row} ({msg.encoding})")
    data = _as_bytes(msg.data)
    need = step * h
    if data.size < need:
        raise ConversionError(f"{what}: truncated data, {data.size} bytes but step*height = "
                              f"{step}*{h} = {need}")
    return data[:need].reshape(h, step)[:, :row]


def image_to_rgb(msg: Image, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """sensor_msgs/Image -> RGB uint8 [H, W, 3] (a new array, not a view of the message)."""
    enc = msg.encoding
    if enc not in _DECODE:
        raise ConversionError(f"unsupported image encoding {enc!r}; supported: "
                              f"{', '.join(SUPPORTED_ENCODINGS)}")
    h, w = int(msg.height), int(msg.width)
    if h == 0 or w == 0:
        raise ConversionError(f"empty image ({w}x{h}, {enc})")
    if h * w > max_pixels:
        raise ConversionError(f"image {w}x{h} has {h * w} pixels, more than max_image_pixels="
                              f"{max_pixels}")
    bpp, channels, code = _DECODE[enc]
    if bpp == 2 and w % 2:
        raise ConversionError(f"{enc} (4:2:2) needs an even width, got {w}")
    pix = _pixels(msg, bpp, f"image {w}x{h} {enc}").reshape(h, w, channels)
    if code is None:
        return np.array(pix, order="C")  # copy: drops padding, owns its memory
    return cv2.cvtColor(np.ascontiguousarray(pix), code)


def compressed_to_rgb(msg: CompressedImage, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg, png, ...: what PIL can size and cv2 decode) -> RGB.
    The pixel limit is checked on the header, before anything is decoded."""
    data = _as_bytes(msg.data)
    fmt = msg.format
    if "compresseddepth" in fmt.lower():
        raise ConversionError(f"compressed format {fmt!r} is a depth image; colour images only")
    if data.size == 0:
        raise ConversionError(f"empty CompressedImage (format {fmt!r})")
    undecodable = (f"could not decode {data.size} bytes of CompressedImage (format {fmt!r}); "
                   "jpeg, png, webp, bmp, tiff, ... are read")
    w, h = _declared_size(data, undecodable)
    if h * w > max_pixels:  # before decoding: a few hundred bytes can declare 20000x20000
        raise ConversionError(f"compressed image header declares {w}x{h} = {h * w} pixels, "
                              f"more than max_image_pixels={max_pixels}")
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ConversionError(undecodable)
    h, w = bgr.shape[:2]  # EXIF orientation may swap the header's sides; PIL and cv2 may differ
    if h * w > max_pixels:
        raise ConversionError(f"image {w}x{h} has {h * w} pixels, more than max_image_pixels="
                              f"{max_pixels}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _declared_size(data: np.ndarray, undecodable: str) -> tuple[int, int]:
    """(width, height) from the compressed header alone (PIL reads no pixels on open), so the
    pixel limit holds before cv2 allocates anything. Formats PIL cannot size are refused: cv2
    would have to decode them in full to find out."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
            with PIL.Image.open(io.BytesIO(data.tobytes())) as im:
                return int(im.size[0]), int(im.size[1])
    except PIL.Image.DecompressionBombError as exc:  # PIL's own limit (~179 M pixels)
        raise ConversionError(f"compressed image header declares more pixels than any "
                              f"max_image_pixels allows: {exc}") from None
    except (OSError, ValueError, SyntaxError) as exc:  # UnidentifiedImageError is an OSError
        raise ConversionError(f"{undecodable} ({type(exc).__name__})") from None


def region_to_mask(region: RegionPrompt, image_hw: tuple[int, int],
                   default_point_radius: float) -> np.ndarray:
    """One RegionPrompt -> uint8 0/1 mask [H, W] for an image of size image_hw = (H, W).

    TYPE_MASK: mono8 (or 8UC1) of exactly the image size; non-zero pixels are the object.
    TYPE_BOX: the filled rectangle, clipped to the image.
    TYPE_POLYGON: the filled polygon (>= 3 finite vertices, x right / y down, z ignored).
    TYPE_POINT: the pixels whose centre lies within r of the point (inclusive), with
    r = region.point_radius, or `default_point_radius` when that is 0.
    A region that selects no pixel of the image is an error ("empty region").
    """
    h, w = int(image_hw[0]), int(image_hw[1])
    kind = int(region.type)
    if kind == RegionPrompt.TYPE_MASK:
        mask = _mask_pixels(region.mask, h, w)
    elif kind == RegionPrompt.TYPE_BOX:
        mask = _box_mask(region.box, h, w)
    elif kind == RegionPrompt.TYPE_POLYGON:
        mask = _polygon_mask(region.polygon, h, w)
    elif kind == RegionPrompt.TYPE_POINT:
        radius = float(region.point_radius) or float(default_point_radius)
        mask = _point_mask(float(region.point.x), float(region.point.y), radius, h, w)
    else:
        raise ConversionError(f"unknown region type {kind}; expected TYPE_MASK=0, TYPE_BOX=1, "
                              "TYPE_POLYGON=2 or TYPE_POINT=3")
    if not mask.any():
        raise ConversionError(f"empty region: the {_TYPE_NAMES.get(kind, kind)} selects no "
                              f"pixel of the {w}x{h} image")
    return mask


_TYPE_NAMES = {0: "mask", 1: "box", 2: "polygon", 3: "point"}


def check_region_cost(mask: np.ndarray, max_patches: int, cfg: PreprocessConfig) -> None:
    """Refuse a region whose zoomed crop would cost more than `max_patches` ViT patches
    (0 = no cap). The official rule enlarges a small region until it covers 32 patches, so a
    few-pixel region becomes a crop of thousands of patches (a 1-pixel one: 8,100)."""
    if max_patches <= 0:
        return
    patches = crop_patches(mask, cfg)
    if patches > max_patches:
        raise ConversionError(f"region of {int(np.count_nonzero(mask))} pixel(s) would be "
                              f"encoded as {patches} ViT patches (the official zoom enlarges "
                              f"small regions), above max_region_patches={max_patches}")


def _mask_pixels(m: Image, h: int, w: int) -> np.ndarray:
    if m.encoding not in MASK_ENCODINGS:
        raise ConversionError(f"mask encoding {m.encoding!r} is not supported; masks must be "
                              f"{' or '.join(MASK_ENCODINGS)} (non-zero = object)")
    if (int(m.width), int(m.height)) != (w, h):
        raise ConversionError(f"mask is {m.width}x{m.height} but image is {w}x{h}")
    if h == 0 or w == 0:
        raise ConversionError(f"empty mask ({w}x{h})")
    return (_pixels(m, 1, f"mask {w}x{h}") != 0).astype(np.uint8)


def _box_mask(box, h: int, w: int) -> np.ndarray:
    x0, y0, bw, bh = int(box.x_offset), int(box.y_offset), int(box.width), int(box.height)
    if bw == 0 or bh == 0:
        raise ConversionError(f"degenerate box: width={bw}, height={bh} (x_offset={x0}, "
                              f"y_offset={y0}); both must be > 0")
    if x0 >= w or y0 >= h:
        raise ConversionError(f"empty region: box at ({x0}, {y0}) lies outside the {w}x{h} image")
    mask = np.zeros((h, w), np.uint8)
    mask[y0:min(y0 + bh, h), x0:min(x0 + bw, w)] = 1
    return mask


def _polygon_mask(points: Sequence, h: int, w: int) -> np.ndarray:
    if len(points) < 3:
        raise ConversionError(f"a polygon needs >= 3 vertices, got {len(points)}")
    xy = np.array([(p.x, p.y) for p in points], np.float64)
    if not np.isfinite(xy).all():
        raise ConversionError("polygon has NaN or infinite coordinates")
    shift = 4  # sub-pixel vertices, as cv2 fixed point with 1/16 px precision
    pts = np.round(np.clip(xy, -_COORD_LIMIT, _COORD_LIMIT) * (1 << shift)).astype(np.int32)
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [pts], 1, cv2.LINE_8, shift)
    return mask


def _point_mask(x: float, y: float, r: float, h: int, w: int) -> np.ndarray:
    if not (math.isfinite(x) and math.isfinite(y) and math.isfinite(r)):
        raise ConversionError(f"point ({x}, {y}) with radius {r} is not finite")
    if r < 0:
        raise ConversionError(f"point radius must be >= 0, got {r}")
    mask = np.zeros((h, w), np.uint8)
    x0, x1 = max(math.floor(x - r), 0), min(math.ceil(x + r) + 1, w)
    y0, y1 = max(math.floor(y - r), 0), min(math.ceil(y + r) + 1, h)
    if x0 < x1 and y0 < y1:
        yy, xx = np.ogrid[y0:y1, x0:x1]
        mask[y0:y1, x0:x1] = (xx - x) ** 2 + (yy - y) ** 2 <= r * r
    return mask


# ------------------------------------------------------------------------------ numpy -> msg
def make_header(stamp_ns: int = 0, frame_id: str = "") -> Header:
    return Header(stamp=ns_to_stamp(stamp_ns), frame_id=frame_id)


def _packed_image(pixels: np.ndarray, encoding: str, header: Header | None,
                  row_padding: int) -> Image:
    h, w = pixels.shape[:2]
    rows = np.ascontiguousarray(pixels).reshape(h, -1)
    if row_padding:
        rows = np.concatenate([rows, np.zeros((h, row_padding), np.uint8)], axis=1)
    return Image(header=header or Header(), height=h, width=w, encoding=encoding,
                 is_bigendian=0, step=rows.shape[1], data=array.array("B", rows.tobytes()))


def rgb_to_image(rgb: np.ndarray, encoding: str = "rgb8", header: Header | None = None,
                 row_padding: int = 0) -> Image:
    """RGB uint8 [H, W, 3] -> Image in any supported encoding (tests use every one of them);
    `row_padding` extra bytes per row exercise `step` handling."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ConversionError(f"expected RGB uint8 [H, W, 3], got {rgb.dtype} {rgb.shape}")
    if encoding not in _ENCODE:
        raise ConversionError(f"cannot encode {encoding!r}; supported: "
                              f"{', '.join(SUPPORTED_ENCODINGS)}")
    code = _ENCODE[encoding]
    pixels = rgb if code is None else cv2.cvtColor(np.ascontiguousarray(rgb), code)
    return _packed_image(pixels, encoding, header, row_padding)


def mask_to_image(mask: np.ndarray, header: Header | None = None, row_padding: int = 0) -> Image:
    """0/1 (or any) mask [H, W] -> mono8 Image with 255 for the object (visible in viewers)."""
    if mask.ndim != 2:
        raise ConversionError(f"expected a mask [H, W], got shape {mask.shape}")
    return _packed_image(np.where(mask != 0, 255, 0).astype(np.uint8), "mono8", header,
                         row_padding)


def rgb_to_compressed(rgb: np.ndarray, fmt: str = "png", header: Header | None = None
                      ) -> CompressedImage:
    """RGB -> CompressedImage (png or jpeg), for publishers and tests."""
    ok, buf = cv2.imencode("." + ("jpg" if fmt in ("jpeg", "jpg") else fmt),
                           cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ConversionError(f"cv2.imencode failed for format {fmt!r}")
    return CompressedImage(header=header or Header(), format=fmt,
                           data=array.array("B", buf.tobytes()))
