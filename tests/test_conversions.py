"""numpy <-> ROS message conversions: every encoding, step padding, masks, and every bad input."""

from __future__ import annotations

import array
import math

import numpy as np
import pytest
from geometry_msgs.msg import Point32
from sensor_msgs.msg import CompressedImage, Image, RegionOfInterest

from pixelrefer_ros.ros.conversions import (
    SUPPORTED_ENCODINGS,
    ConversionError,
    compressed_to_rgb,
    image_to_rgb,
    make_header,
    mask_to_image,
    ns_to_stamp,
    region_to_mask,
    rgb_to_compressed,
    rgb_to_image,
    stamp_to_ns,
)
from pixelrefer_ros_interfaces.msg import RegionPrompt

H, W = 48, 64


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (H, W, 3), dtype=np.uint8)


def patches() -> np.ndarray:
    """Solid red / green / blue / grey blocks (4:2:2 chroma is shared by pixel pairs, so a
    colour check needs flat areas)."""
    img = np.zeros((H, W, 3), np.uint8)
    img[:, :16] = (220, 30, 30)
    img[:, 16:32] = (30, 200, 40)
    img[:, 32:48] = (40, 50, 230)
    img[:, 48:] = (128, 128, 128)
    return img


@pytest.mark.parametrize("padding", [0, 7])
@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
def test_lossless_colour_round_trip(rgb, encoding, padding):
    msg = rgb_to_image(rgb, encoding, make_header(5, "cam"), row_padding=padding)
    assert msg.step == W * len(encoding.removesuffix("8")) + padding
    assert isinstance(msg.data, array.array) and msg.header.frame_id == "cam"
    out = image_to_rgb(msg)
    assert out.dtype == np.uint8 and out.shape == (H, W, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize("padding", [0, 3])
@pytest.mark.parametrize("encoding", ["mono8", "8UC1"])
def test_mono_round_trip(encoding, padding):
    grey = np.repeat(np.arange(W, dtype=np.uint8)[None, :, None] * 3, H, 0).repeat(3, 2)
    out = image_to_rgb(rgb_to_image(grey, encoding, row_padding=padding))
    np.testing.assert_array_equal(out, grey)


@pytest.mark.parametrize("padding", [0, 6])
@pytest.mark.parametrize("encoding", ["yuyv", "yuv422_yuy2", "uyvy", "yuv422"])
def test_yuv422_colours_are_roughly_right(encoding, padding):
    img = patches()
    msg = rgb_to_image(img, encoding, row_padding=padding)
    assert msg.step == 2 * W + padding
    out = image_to_rgb(msg)
    assert np.abs(out.astype(int) - img.astype(int)).max() <= 6


def test_yuv422_byte_order_is_the_ros_one():
    """ROS "yuv422" is UYVY (chroma first); "yuv422_yuy2"/"yuyv" is YUYV (luma first)."""
    red = np.zeros((2, 2, 3), np.uint8)
    red[:] = (220, 30, 30)
    uyvy = np.frombuffer(rgb_to_image(red, "yuv422").data, np.uint8)
    yuyv = np.frombuffer(rgb_to_image(red, "yuyv").data, np.uint8)
    assert uyvy[1] == yuyv[0] and uyvy[0] == yuyv[1]  # Y and U swap places
    swapped = rgb_to_image(red, "yuyv")
    swapped.encoding = "uyvy"  # reading YUYV bytes as UYVY gives wrong colours
    assert np.abs(image_to_rgb(swapped).astype(int) - red.astype(int)).max() > 50


def test_output_does_not_alias_the_message(rgb):
    msg = rgb_to_image(rgb)
    out = image_to_rgb(msg)
    msg.data[0] = (int(msg.data[0]) + 1) % 256
    assert out[0, 0, 0] == rgb[0, 0, 0]


def test_big_endian_flag_is_irrelevant_for_8_bit(rgb):
    msg = rgb_to_image(rgb, "bgr8")
    msg.is_bigendian = 1
    np.testing.assert_array_equal(image_to_rgb(msg), rgb)


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_compressed_round_trip(fmt):
    img = patches()
    msg = rgb_to_compressed(img, fmt, make_header(1))
    assert isinstance(msg, CompressedImage) and msg.format == fmt
    out = compressed_to_rgb(msg)
    tol = 0 if fmt == "png" else 12
    assert out.shape == img.shape and np.abs(out.astype(int) - img.astype(int)).mean() <= tol


def bad(msg_kw: dict, data: bytes) -> Image:
    msg = Image(**msg_kw)
    msg.data = array.array("B", data)
    return msg


@pytest.mark.parametrize(("msg", "words"), [
    (bad({"height": 2, "width": 2, "encoding": "32FC1", "step": 8}, bytes(16)),
     ["'32FC1'", "supported: rgb8, bgr8"]),
    (bad({"height": 2, "width": 2, "encoding": "mono16", "step": 4}, bytes(8)), ["'mono16'"]),
    (bad({"height": 2, "width": 2, "encoding": "bayer_rggb8", "step": 2}, bytes(4)),
     ["bayer_rggb8"]),
    (bad({"height": 2, "width": 2, "encoding": "", "step": 6}, bytes(12)), ["''"]),
    (bad({"height": 4, "width": 4, "encoding": "rgb8", "step": 12}, bytes(40)),
     ["truncated", "40 bytes", "48"]),
    (bad({"height": 4, "width": 4, "encoding": "rgb8", "step": 10}, bytes(40)),
     ["step 10", "4*3 = 12"]),
    (bad({"height": 0, "width": 4, "encoding": "rgb8", "step": 12}, b""), ["empty image"]),
    (bad({"height": 4, "width": 0, "encoding": "rgb8", "step": 0}, b""), ["empty image"]),
    (bad({"height": 2, "width": 3, "encoding": "yuyv", "step": 6}, bytes(12)), ["even width"]),
])
def test_bad_images_raise_a_clear_conversion_error(msg, words):
    with pytest.raises(ConversionError) as info:
        image_to_rgb(msg)
    assert isinstance(info.value, ValueError)
    for w in words:
        assert w in str(info.value)


def test_too_many_pixels(rgb):
    with pytest.raises(ConversionError, match="max_image_pixels=1000"):
        image_to_rgb(rgb_to_image(rgb), max_pixels=1000)
    with pytest.raises(ConversionError, match="max_image_pixels=1000"):
        compressed_to_rgb(rgb_to_compressed(rgb), max_pixels=1000)


@pytest.mark.parametrize(("fmt", "data", "words"), [
    ("jpeg", b"not a jpeg at all", "could not decode 17 bytes"),
    ("png", b"", "empty CompressedImage"),
    ("16UC1; compressedDepth png", b"\x00" * 20, "depth image"),
])
def test_bad_compressed_images(fmt, data, words):
    msg = CompressedImage(format=fmt, data=array.array("B", data))
    with pytest.raises(ConversionError, match=words):
        compressed_to_rgb(msg)


def test_supported_list_is_what_decodes():
    assert set(SUPPORTED_ENCODINGS) == {"rgb8", "bgr8", "rgba8", "bgra8", "mono8", "8UC1", "yuyv",
                                        "yuv422_yuy2", "uyvy", "yuv422"}


# ----------------------------------------------------------------------------------- regions
def mask_region(mask: np.ndarray, encoding: str = "mono8", padding: int = 0) -> RegionPrompt:
    img = mask_to_image(mask, row_padding=padding)
    img.encoding = encoding
    return RegionPrompt(type=RegionPrompt.TYPE_MASK, mask=img)


@pytest.mark.parametrize(("encoding", "padding"), [("mono8", 0), ("8UC1", 5)])
def test_mask_region(encoding, padding):
    m = np.zeros((H, W), np.uint8)
    m[10:20, 5:30] = 7  # any non-zero value is the object
    out = region_to_mask(mask_region(m, encoding, padding), (H, W), 10.0)
    assert out.dtype == np.uint8 and set(np.unique(out)) == {0, 1}
    np.testing.assert_array_equal(out, (m > 0).astype(np.uint8))


def test_mask_size_mismatch_names_both_sizes():
    with pytest.raises(ConversionError, match="mask is 32x16 but image is 64x48"):
        region_to_mask(mask_region(np.ones((16, 32), np.uint8)), (H, W), 10.0)


def test_mask_bad_encoding_and_empty():
    region = mask_region(np.ones((H, W), np.uint8))
    region.mask.encoding = "rgb8"
    with pytest.raises(ConversionError, match="mono8 or 8UC1"):
        region_to_mask(region, (H, W), 10.0)
    with pytest.raises(ConversionError, match="empty region"):
        region_to_mask(mask_region(np.zeros((H, W), np.uint8)), (H, W), 10.0)
    truncated = mask_region(np.ones((H, W), np.uint8))
    truncated.mask.data = truncated.mask.data[:100]
    with pytest.raises(ConversionError, match="truncated"):
        region_to_mask(truncated, (H, W), 10.0)


def box(x, y, w, h) -> RegionPrompt:
    return RegionPrompt(type=RegionPrompt.TYPE_BOX,
                        box=RegionOfInterest(x_offset=x, y_offset=y, width=w, height=h))


def test_box_region_is_clipped_to_the_image():
    out = region_to_mask(box(50, 40, 100, 100), (H, W), 10.0)
    assert out.sum() == (W - 50) * (H - 40) and out[40:, 50:].all()
    assert region_to_mask(box(1, 2, 3, 4), (H, W), 10.0).sum() == 12


@pytest.mark.parametrize(("region", "words"), [
    (box(5, 5, 0, 10), "degenerate box"),
    (box(5, 5, 10, 0), "degenerate box"),
    (box(W, 0, 10, 10), "outside"),
    (box(0, H + 3, 10, 10), "outside"),
])
def test_bad_boxes(region, words):
    with pytest.raises(ConversionError, match=words):
        region_to_mask(region, (H, W), 10.0)


def polygon(*xy) -> RegionPrompt:
    return RegionPrompt(type=RegionPrompt.TYPE_POLYGON,
                        polygon=[Point32(x=float(x), y=float(y)) for x, y in xy])


def test_polygon_region():
    out = region_to_mask(polygon((10, 10), (30, 10), (30, 30), (10, 30)), (H, W), 10.0)
    assert out[10:31, 10:31].all() and out.sum() == 21 * 21
    # a triangle half outside the image is clipped, not refused
    assert region_to_mask(polygon((-50, 0), (20, 0), (20, 40)), (H, W), 10.0).any()


@pytest.mark.parametrize(("region", "words"), [
    (polygon((1, 1), (5, 5)), ">= 3 vertices"),
    (polygon(), ">= 3 vertices"),
    (polygon((1, 1), (math.nan, 5), (9, 9)), "NaN or infinite"),
    (polygon((1, 1), (math.inf, 5), (9, 9)), "NaN or infinite"),
    (polygon((-30, -30), (-10, -30), (-10, -10)), "empty region"),
])
def test_bad_polygons(region, words):
    with pytest.raises(ConversionError, match=words):
        region_to_mask(region, (H, W), 10.0)


def point(x, y, r=0.0) -> RegionPrompt:
    return RegionPrompt(type=RegionPrompt.TYPE_POINT, point=Point32(x=float(x), y=float(y)),
                        point_radius=r)


def test_point_region_is_a_disk():
    out = region_to_mask(point(30, 20), (H, W), 8.0)  # radius 0 -> the default
    assert abs(int(out.sum()) - math.pi * 64) < 12 and out[20, 30] and out[20, 38] \
        and not out[20, 39]
    assert region_to_mask(point(30, 20, 0.4), (H, W), 8.0).sum() == 1  # just that pixel
    edge = region_to_mask(point(0, 0, 5.0), (H, W), 8.0)  # a quarter disk in the corner
    assert 15 < edge.sum() < 30


@pytest.mark.parametrize(("region", "words"), [
    (point(math.nan, 3), "not finite"),
    (point(3, 3, -2.0), ">= 0"),
    (point(-100, -100, 5.0), "empty region"),
])
def test_bad_points(region, words):
    with pytest.raises(ConversionError, match=words):
        region_to_mask(region, (H, W), 8.0)


def test_unknown_region_type():
    with pytest.raises(ConversionError, match="unknown region type 9"):
        region_to_mask(RegionPrompt(type=9), (H, W), 8.0)


def test_stamps_round_trip():
    for ns in (0, 1, 999_999_999, 1_000_000_000, 1_700_000_123_456_789_012 // 1000):
        assert stamp_to_ns(ns_to_stamp(ns)) == ns
    t = ns_to_stamp(2_500_000_001)
    assert (t.sec, t.nanosec) == (2, 500_000_001)
