"""Hypothesis strategies for hostile ROS inputs: images, compressed images, region prompts and
DescribeRegion requests with random sizes, encodings, step/size mismatches, truncated data,
NaN/inf coordinates, out-of-bounds and degenerate shapes, empty and full masks, huge ids and
stamps off the timeline.

Shared by the in-process property tests (tests/test_fuzz_inputs.py) and the cross-process fuzz
client (tests/test_fuzz_node.py), so both throw the same kinds of garbage. Pixel bytes come from
a drawn seed (numpy), not byte by byte: hypothesis stays fast and still shrinks the seed.
"""

from __future__ import annotations

import array
import zlib

import cv2
import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point32
from hypothesis import strategies as st
from sensor_msgs.msg import CompressedImage, Image, RegionOfInterest
from std_msgs.msg import Header

from pixelrefer_ros.ros.conversions import SUPPORTED_ENCODINGS
from pixelrefer_ros_interfaces.msg import RegionPrompt
from pixelrefer_ros_interfaces.srv import DescribeRegion

S = 1_000_000_000
UINT32_MAX = 2**32 - 1
JUNK_ENCODINGS = ("32FC1", "mono16", "16UC3", "bayer_rggb8", "", "RGB8", "rgb8 ", "jpeg")
BYTES_PER_PIXEL = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "8UC1": 1,
                   "yuyv": 2, "yuv422_yuy2": 2, "uyvy": 2, "yuv422": 2}
MAX_DATA = 1 << 16  # bytes actually sent per fuzzed message, whatever the header claims
HUGE_SIDES = (65_536, 100_000, 2**31 - 1, UINT32_MAX)

ZERO_STAMP = st.just(0)
float32s = st.floats(width=32)  # NaN, +-inf, subnormals, +-3.4e38 included
uint32s = st.integers(0, UINT32_MAX)


def mostly(usual: st.SearchStrategy, rare: st.SearchStrategy,
           odds: int = 3) -> st.SearchStrategy:
    """`usual` odds times out of odds + 1, else `rare`: keeps most cases deep enough to reach
    the code behind the first check, while every field is still sometimes hostile."""
    return st.sampled_from([True] * odds + [False]).flatmap(lambda ok: usual if ok else rare)


def pixel_bytes(seed: int, n: int, pattern: str) -> array.array:
    if pattern == "zeros":
        data = np.zeros(n, np.uint8)
    elif pattern == "ones":
        data = np.full(n, 255, np.uint8)
    else:
        data = np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)
    return array.array("B", data.tobytes())


def header(stamp_ns: int = 0, frame_id: str = "fuzz") -> Header:
    return Header(stamp=time_msg(stamp_ns), frame_id=frame_id)


def time_msg(stamp_ns: int) -> Time:
    """Any stamp, clamped to what builtin_interfaces/Time can hold (int32 s, uint32 ns)."""
    sec, nanosec = divmod(int(stamp_ns), S)
    return Time(sec=max(min(sec, 2**31 - 1), -(2**31)), nanosec=nanosec)


@st.composite
def raw_stamps(draw) -> Time:
    """Time fields as a buggy driver may fill them: negative seconds, nanosec >= 1e9."""
    return Time(sec=draw(st.integers(-(2**31), 2**31 - 1)), nanosec=draw(uint32s))


IMAGE_DAMAGE = ("none", "none", "none", "encoding", "size", "huge_size", "step", "padding",
                "truncated", "extra_data", "odd_width")


@st.composite
def images(draw, max_side: int = 48, stamps: st.SearchStrategy[int] = ZERO_STAMP) -> Image:
    """sensor_msgs/Image: a well-formed one (any supported encoding, size, row padding) with
    at most one kind of damage: junk encoding, zero or huge size, wrong step, truncated data."""
    encoding = draw(st.sampled_from(SUPPORTED_ENCODINGS))
    h, w = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    damage = draw(st.sampled_from(IMAGE_DAMAGE))
    if damage == "encoding":
        encoding = draw(st.sampled_from(JUNK_ENCODINGS))
    bpp = BYTES_PER_PIXEL.get(encoding) or draw(st.integers(1, 8))
    if bpp == 2 and w % 2:
        w += 1
    if damage == "odd_width":
        w |= 1
    elif damage == "size":
        h, w = draw(st.sampled_from([(0, w), (h, 0), (0, 0)]))
    elif damage == "huge_size":
        h, w = draw(st.sampled_from((*HUGE_SIDES, h))), draw(st.sampled_from((*HUGE_SIDES, w)))
    step = w * bpp
    if damage == "padding":
        step += draw(st.integers(1, 9))
    elif damage == "step":
        step = draw(st.integers(0, max(step - 1, 0)) | st.sampled_from([0, UINT32_MAX]))
    need = step * h
    length = need if need <= MAX_DATA else draw(st.integers(0, 4096))
    if damage == "truncated":
        length = draw(st.integers(0, max(min(need, MAX_DATA) - 1, 0)))
    elif damage == "extra_data":
        length += draw(st.integers(1, 64))
    data = pixel_bytes(draw(st.integers(0, 2**16)), min(length, MAX_DATA),
                       draw(st.sampled_from(["random", "zeros", "ones"])))
    return Image(header=header(draw(stamps)), height=min(h, UINT32_MAX),
                 width=min(w, UINT32_MAX), encoding=encoding,
                 is_bigendian=draw(st.integers(0, 1)), step=min(step, UINT32_MAX), data=data)


def well_formed(msg: Image, max_pixels: int) -> bool:
    """What image_to_rgb must accept: everything else must be refused with a reason."""
    bpp = BYTES_PER_PIXEL.get(msg.encoding)
    h, w = msg.height, msg.width
    return (bpp is not None and h > 0 and w > 0 and h * w <= max_pixels
            and (bpp != 2 or w % 2 == 0) and msg.step >= w * bpp
            and len(msg.data) >= msg.step * h)


def jpeg_or_png(rgb: np.ndarray, fmt: str) -> bytes:
    ok, buf = cv2.imencode("." + fmt, rgb)
    assert ok
    return buf.tobytes()


def with_declared_size(data: bytes, fmt: str, w: int, h: int) -> bytes:
    """Rewrite the size in a jpeg SOF0 or png IHDR header (the pixel data stays tiny)."""
    b = bytearray(data)
    if fmt == "jpg":
        i = b.find(b"\xff\xc0")
        b[i + 5:i + 7], b[i + 7:i + 9] = h.to_bytes(2, "big"), w.to_bytes(2, "big")
    else:  # IHDR: length, type, width, height, ..., CRC over type + data
        b[16:20], b[20:24] = w.to_bytes(4, "big"), h.to_bytes(4, "big")
        b[29:33] = zlib.crc32(bytes(b[12:29])).to_bytes(4, "big")
    return bytes(b)


@st.composite
def compressed_images(draw, stamps: st.SearchStrategy[int] = ZERO_STAMP) -> CompressedImage:
    """Real jpeg/png (some truncated, some with a forged header size), or noise."""
    fmt = draw(st.sampled_from(["jpg", "png"]))
    h, w = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    rgb = np.random.default_rng(draw(st.integers(0, 2**16))).integers(0, 256, (h, w, 3),
                                                                          dtype=np.uint8)
    data = jpeg_or_png(rgb, fmt)
    kind = draw(st.sampled_from(["valid", "truncated", "forged_size", "noise", "empty"]))
    if kind == "truncated":
        data = data[:draw(st.integers(0, len(data) - 1))]
    elif kind == "forged_size":
        side = st.integers(1, 65_535)
        data = with_declared_size(data, fmt, draw(side), draw(side))
    elif kind == "noise":
        data = bytes(pixel_bytes(draw(st.integers(0, 2**16)), draw(st.integers(1, 512)),
                                 "random"))
    elif kind == "empty":
        data = b""
    label = draw(st.sampled_from([fmt, "jpeg", "png", "rgb8; jpeg compressed bgr8",
                                  "16UC1; compressedDepth png", ""]))
    return CompressedImage(header=header(draw(stamps)), format=label,
                           data=array.array("B", data))


@st.composite
def masks(draw, hw: tuple[int, int]) -> Image:
    """A mask Image: the image's size or not, mono8 or not, empty / full / blob / noise,
    sometimes truncated or with a wrong step."""
    other_size = draw(st.sampled_from([False] * 4 + [True]))
    h, w = (draw(st.integers(0, 70)), draw(st.integers(0, 70))) if other_size else hw
    fill = draw(st.sampled_from(["empty", "full", "blob", "blob", "noise"]))
    m = np.zeros((h, w), np.uint8)
    if fill == "full":
        m[:] = 255
    elif fill == "noise":
        m = np.random.default_rng(draw(st.integers(0, 2**16))).integers(0, 2, (h, w),
                                                                          dtype=np.uint8)
    elif fill == "blob" and h and w:
        y, x = draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))
        m[y:y + draw(st.integers(1, h)), x:x + draw(st.integers(1, w))] = draw(
            st.integers(1, 255))
    data = m.tobytes()
    step = w
    damage = draw(st.sampled_from(["none"] * 6 + ["truncated", "short_step"]))
    if damage == "truncated":
        data = data[:draw(st.integers(0, max(len(data) - 1, 0)))]
    elif damage == "short_step":
        step = draw(st.integers(0, max(w - 1, 0)))
    encoding = draw(st.sampled_from(["mono8"] * 4 + ["8UC1", "8UC1", "rgb8", "mono16", ""]))
    return Image(height=h, width=w, encoding=encoding, step=step, data=array.array("B", data))


@st.composite
def region_prompts(draw, hw: tuple[int, int], ids: st.SearchStrategy[int] = uint32s,
                   stamps: st.SearchStrategy[int] = ZERO_STAMP) -> RegionPrompt:
    """One RegionPrompt of any type (including unknown ones) for an image of size hw."""
    kind = draw(st.sampled_from([0, 1, 2, 3] * 4 + [4, 9, 128, 255]))
    h, w = hw
    region = RegionPrompt(header=header(draw(stamps)), object_id=draw(ids), type=kind)
    coordinate = mostly(st.integers(0, max(w, h) + 8), uint32s)
    if kind == RegionPrompt.TYPE_MASK:
        region.mask = draw(masks(hw))
    elif kind == RegionPrompt.TYPE_BOX:
        region.box = RegionOfInterest(x_offset=draw(coordinate), y_offset=draw(coordinate),
                                      width=draw(coordinate), height=draw(coordinate),
                                      do_rectify=draw(st.booleans()))
    elif kind == RegionPrompt.TYPE_POLYGON:
        xy = mostly(st.floats(-20, max(w, h) + 20, width=32), float32s)
        region.polygon = draw(st.lists(st.builds(Point32, x=xy, y=xy, z=float32s), max_size=8))
    elif kind == RegionPrompt.TYPE_POINT:
        xy = mostly(st.floats(-10, max(w, h) + 10, width=32), float32s)
        region.point = Point32(x=draw(xy), y=draw(xy), z=draw(float32s))
        region.point_radius = draw(mostly(st.floats(0, 30, width=32), float32s))
    return region


def region_stamps(base_ns: int) -> st.SearchStrategy[int]:
    """Stamps around a timeline: on it, slightly off, far in the future, before it, zero."""
    return st.one_of(st.just(base_ns), st.integers(base_ns - S, base_ns + S),
                     st.integers(base_ns, base_ns + 3600 * S), st.integers(0, base_ns),
                     st.just(0))


@st.composite
def describe_requests(draw, hw: tuple[int, int], known_ids: tuple[int, ...],
                      cameras: tuple[str, ...], base_ns: int) -> DescribeRegion.Request:
    """Any DescribeRegion request: ids seen or never seen, questions with the wrong number of
    <region>, unknown cameras and modes, stamps off the timeline, NaN/inf windows and timeouts,
    inline regions of every kind."""
    ids = mostly(st.sampled_from(known_ids), uint32s) if known_ids else uint32s
    object_ids = draw(mostly(st.lists(ids, min_size=1, max_size=3),
                             st.lists(ids, max_size=0) | st.lists(ids, min_size=30, max_size=60)))
    n = len(object_ids)
    question = draw(mostly(
        st.sampled_from(["", " and ".join(["<region>"] * n) + "?"]),
        st.one_of(st.builds(lambda k, t: "What is" + " <region>" * k + t, st.integers(0, 4),
                            st.text(max_size=40)),
                  st.text(max_size=200),
                  st.text(alphabet="<region> abc", min_size=500, max_size=3000))))
    stamp = draw(mostly(st.builds(time_msg, region_stamps(base_ns)), raw_stamps()))
    return DescribeRegion.Request(
        object_ids=object_ids, question=question,
        camera=draw(mostly(st.sampled_from(("", *cameras)), st.text(max_size=12))),
        mode=draw(mostly(st.sampled_from([0, 1, 2]), st.integers(0, 255))), stamp=stamp,
        window_s=draw(mostly(st.floats(0, 5, width=32), float32s)),
        max_frames=draw(mostly(st.integers(0, 8), st.integers(0, 65_535))),
        regions=draw(mostly(st.just([]), st.lists(region_prompts(hw, ids), max_size=3), 2)),
        max_new_tokens=draw(mostly(st.integers(0, 8), st.integers(0, 65_535))),
        timeout_s=draw(mostly(st.floats(0, 3, width=32), float32s)))


__all__ = ["S", "compressed_images", "describe_requests", "header", "images", "masks",
           "region_prompts", "region_stamps", "time_msg", "well_formed"]
