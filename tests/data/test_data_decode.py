"""cxrjax.data.decode: every mode/format to uint8 grayscale, EXIF, big JPEGs, bad files."""

import io

import numpy as np
import pytest
from PIL import Image

from cxrjax.data.decode import (
    DecodeError,
    decode_grayscale,
    decode_mask,
    is_hidden,
    read_grayscale,
    resize_square,
    to_uint8,
)
from tests.data.fixtures import corrupt_png, encode, noise


def _gray(seed=1, h=40, w=56):
    return noise(seed, h, w)


@pytest.mark.parametrize("fmt", ["PNG", "BMP"])
@pytest.mark.parametrize("mode", ["L", "RGB", "P"])
def test_lossless_modes_decode_to_the_same_gray(fmt, mode):
    gray = _gray()
    data = encode(gray, fmt, mode=mode)
    out = decode_grayscale(data)
    assert out.pixels.dtype == np.uint8 and out.pixels.shape == gray.shape
    assert out.original_size == gray.shape
    # R == G == B, and a <= 256-level palette, convert back losslessly.
    np.testing.assert_array_equal(out.pixels, gray)


def test_rgba_is_composited_over_black():
    gray = _gray()
    alpha = np.full_like(gray, 255)
    alpha[:, :10] = 0  # fully transparent band
    out = decode_grayscale(encode(np.dstack([gray, gray, gray, alpha])))
    np.testing.assert_array_equal(out.pixels[:, 10:], gray[:, 10:])
    assert np.all(out.pixels[:, :10] == 0)


def test_la_and_bilevel_modes():
    gray = _gray()
    la = encode(np.dstack([gray, np.full_like(gray, 255)]))
    np.testing.assert_array_equal(decode_grayscale(la).pixels, gray)
    bits = gray > 127
    one = io.BytesIO()
    Image.fromarray(bits).convert("1").save(one, format="PNG")
    out = decode_grayscale(one.getvalue()).pixels
    np.testing.assert_array_equal(out, np.where(bits, 255, 0))


def test_sixteen_bit_is_windowed_to_its_own_range():
    # A 12-bit detector image stored in a 16-bit PNG: min -> 0, max -> 255, linear.
    wide = np.array([[100, 1100, 4195]], np.uint16).repeat(4, axis=0)
    data = encode(wide)
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    out = decode_grayscale(data).pixels
    expected = np.rint((wide.astype(np.float64) - 100) * 255 / (4195 - 100)).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)
    assert out[0].tolist() == [0, 62, 255]


@pytest.mark.parametrize("mode, dtype", [("I", np.int32), ("F", np.float32)])
def test_32_bit_tiff_is_windowed(mode, dtype):
    values = np.array([[-50, 0, 150]], dtype).repeat(3, axis=0)
    buffer = io.BytesIO()
    image = Image.fromarray(values)
    assert image.mode == mode
    image.save(buffer, format="TIFF")
    out = decode_grayscale(buffer.getvalue()).pixels
    assert out[0].tolist() == [0, 64, 255]


def test_to_uint8_handles_constant_float_and_nan():
    assert to_uint8(np.full((3, 3), 7, np.int32)).max() == 0
    out = to_uint8(np.array([[0.0, 0.5, np.nan, 1.0]], np.float32))
    assert out.tolist() == [[0, 128, 0, 255]]


def test_resize_stretches_to_square_without_letterbox():
    # A wide image stretched to a square: no black bars on any side.
    bright = np.full((20, 80), 200, np.uint8)
    out = decode_grayscale(encode(bright), size=32)
    assert out.pixels.shape == (32, 32)
    assert out.pixels.min() == 200
    assert out.original_size == (20, 80)


def _jpeg_with_orientation(array, orientation):
    image = Image.fromarray(array)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


@pytest.mark.parametrize("size", [None, 24])
def test_exif_orientation_is_honoured(size):
    # Stored 30x60 (h x w) with a bright block at the stored top-left; orientation 6
    # means "rotate 90 degrees clockwise to display": displayed 60x30 with the block
    # at the top-right.
    stored = np.full((30, 60), 20, np.uint8)
    stored[:10, :10] = 240
    out = decode_grayscale(_jpeg_with_orientation(stored, 6), size=size)
    assert out.original_size == (60, 30)
    pixels = out.pixels.astype(int)
    h, w = pixels.shape
    if size is None:
        assert (h, w) == (60, 30)
    else:
        assert (h, w) == (size, size)
    top_right = pixels[: h // 6, -max(1, w // 6) :].mean()
    top_left = pixels[: h // 6, : max(1, w // 6)].mean()
    bottom_right = pixels[-(h // 6) :, -max(1, w // 6) :].mean()
    assert top_right > 200 and top_left < 60 and bottom_right < 60


def test_no_exif_orientation_keeps_layout():
    stored = np.full((30, 60), 20, np.uint8)
    stored[:10, :10] = 240
    out = decode_grayscale(_jpeg_with_orientation(stored, 1))
    assert out.pixels.shape == (30, 60) and out.pixels[:8, :8].mean() > 200


def test_large_jpeg_is_downscaled_while_decoding():
    big = np.asarray(Image.fromarray(noise(3, 30, 40)).resize((4000, 3000)))
    data = encode(np.dstack([big] * 3), "JPEG", quality=80)
    out = decode_grayscale(data, size=64)
    assert out.pixels.shape == (64, 64) and out.pixels.dtype == np.uint8
    assert out.original_size == (3000, 4000)
    # libjpeg DCT scaling (1/8 here): the full 12 Mpx image was never materialised.
    assert out.decoded_size == (375, 500)


def test_large_png_is_resized_and_keeps_content():
    big = np.zeros((4100, 4100), np.uint8)
    big[:, 2050:] = 255
    out = decode_grayscale(encode(big), size=32)
    assert out.original_size == (4100, 4100)
    assert out.pixels[:, :15].max() == 0 and out.pixels[:, 17:].min() == 255


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty file"),
        (b"just some text, not an image", "not a readable image"),
        (corrupt_png(5), "not a readable image"),  # PNG cut in half
        (b"\xff\xd8\xff\xe0" + b"\x00" * 20, "not a readable image"),  # broken JPEG header
    ],
)
def test_bad_bytes_raise_decode_error_naming_the_source(data, message):
    with pytest.raises(DecodeError, match=message) as error:
        decode_grayscale(data, source="some/dir/file.png")
    assert "some/dir/file.png" in str(error.value)


def test_unsupported_format_is_rejected():
    gif = io.BytesIO()
    Image.fromarray(_gray()).save(gif, format="GIF")
    with pytest.raises(DecodeError, match="unsupported image format 'GIF'"):
        decode_grayscale(gif.getvalue())


def test_read_grayscale_missing_file(tmp_path):
    with pytest.raises(DecodeError, match="cannot read"):
        read_grayscale(tmp_path / "missing.png")
    path = tmp_path / "ok.png"
    path.write_bytes(encode(_gray()))
    assert read_grayscale(path, size=16).pixels.shape == (16, 16)


def test_mask_decodes_binary_at_size():
    mask = np.zeros((256, 256), np.uint8)
    mask[64:192, 32:128] = 255
    out = decode_mask(encode(mask), size=64)
    assert out.shape == (64, 64) and set(np.unique(out).tolist()) == {0, 255}
    assert out[16:48, 8:32].min() == 255 and out[:14].max() == 0


def test_hidden_names():
    assert is_hidden(".DS_Store") and is_hidden("a/._img.png") and not is_hidden("a/img.png")


def test_resize_square_identity_when_already_square():
    image = Image.fromarray(_gray(h=32, w=32))
    assert resize_square(image, 32) is image
