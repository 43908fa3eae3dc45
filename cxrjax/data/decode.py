"""Robust decoding of one radiograph file into an 8-bit grayscale array.

Used by dataset preparation (every file of a manual download) and by single-file
prediction (`cxrjax.predict`), so both see exactly the same pixels.

What "robust" means here, and why:

* Formats: PNG, JPEG (incl. MPO from phones), BMP and TIFF; 8- and 16-bit; PIL modes
  1/L/P/RGB/RGBA/LA/CMYK/I;16/I/F. Anything else raises `DecodeError`, which
  preparation turns into a "skipped: <reason>" line of its report.
* Grayscale: colour is converted with PIL's ITU-R 601 luma (a radiograph saved as RGB
  has R == G == B, so this is lossless there). Transparent pixels are composited over
  black, the background of a radiograph.
* 16- and 32-bit images are windowed linearly from their own minimum to their own
  maximum onto 0..255. Dividing by 257 would assume the full 16-bit range is used;
  detectors store 10-14 significant bits, which would give almost black images.
* EXIF orientation is honoured (phone photos of radiographs in the DP dataset).
* Very large images (4000+ px) are shrunk while decoding: JPEG uses libjpeg's DCT
  scaling (`Image.draft`, 1/2..1/8 of the size, never decoding the full image), and the
  final resize uses `reducing_gap` (integer `Image.reduce` first, then a filtered
  resize), so memory stays near one 8-bit copy of the source.
* Truncated/corrupt files fail loudly (PIL's LOAD_TRUNCATED_IMAGES stays off).
* Only regular files are read (`read_regular_file`): a FIFO named x.png would block
  open() until a writer appears, for ever, and a symlink to /dev/zero would read until
  memory runs out.

Resizing to the preparation size is a plain stretch to a square (no letterbox); see
`resize_square` for why.
"""

from __future__ import annotations

import dataclasses
import io
import os
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from cxrjax.data.errors import DataError

# Extensions that are considered images when scanning a folder. Other files (metadata
# spreadsheets, READMEs, Thumbs.db) are skipped and reported, never decoded.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# PIL format names accepted after sniffing the content (the extension can lie).
SUPPORTED_FORMATS = frozenset({"PNG", "JPEG", "MPO", "BMP", "TIFF"})

_ORIENTATION_TAG = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Resize filter: PIL's bilinear is antialiased when shrinking (its support scales with
# the factor), and is what S2 ("bilinear resize to 224x224") used.
_RESAMPLE = Image.Resampling.BILINEAR
_REDUCING_GAP = 2.0


class DecodeError(DataError):
    """A file that cannot be decoded as an image; the message says why."""


@dataclasses.dataclass(frozen=True)
class DecodedImage:
    """A decoded grayscale image.

    pixels: uint8 [H, W] (square [size, size] when a size was requested).
    original_size: (height, width) of the source as displayed, i.e. after EXIF
      orientation and before any resizing.
    decoded_size: (height, width) actually decoded, before the final resize and EXIF
      transpose; smaller than the stored size when JPEG DCT scaling was used.
    """

    pixels: np.ndarray
    original_size: tuple[int, int]
    decoded_size: tuple[int, int] = (0, 0)


def is_hidden(path: str | os.PathLike) -> bool:
    """True for dot-files (.DS_Store, ._foo.png from macOS archives, .ipynb_checkpoints)."""
    return Path(path).name.startswith(".")


def has_image_extension(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


_FILE_KINDS = (
    (stat.S_ISDIR, "folder"),
    (stat.S_ISFIFO, "FIFO"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISSOCK, "socket"),
)


def file_kind(mode: int) -> str:
    """What a non-regular st_mode is, in words ("FIFO", "character device", ...)."""
    return next((name for test, name in _FILE_KINDS if test(mode)), "special file")


def regular_file_problem(path: str | os.PathLike) -> str | None:
    """None for a regular file (or a symlink to one), else why it must not be read.

    Looks at the file's metadata only (stat), so nothing is opened: this is how a
    folder scan sorts out FIFOs, devices, sockets and broken symlinks before any read.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except OSError as error:
        if path.is_symlink():
            return f"broken symlink (to {os.readlink(path)}); not read"
        return f"cannot stat file ({error})"
    if stat.S_ISREG(mode):
        return None
    via = f", via a symlink to {os.readlink(path)}" if path.is_symlink() else ""
    return f"not a regular file ({file_kind(mode)}{via}); never read"


class NotRegularFileError(OSError):
    """A path that is not a regular file (FIFO, device, socket, folder)."""


def read_regular_file(path: str | os.PathLike) -> bytes:
    """The bytes of a regular file (or a symlink to one); OSError for anything else.

    The file is opened with O_NONBLOCK, so opening a FIFO returns at once instead of
    waiting for a writer, and the opened descriptor is checked with fstat before any
    read, so a file swapped for a FIFO or a device after a scan is refused too
    (`NotRegularFileError`, an OSError).
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(f"{path}: not a regular file ({file_kind(mode)})")
        with os.fdopen(fd, "rb", closefd=True) as handle:
            fd = -1
            return handle.read()
    finally:
        if fd >= 0:
            os.close(fd)


def resize_square(gray: Image.Image, size: int) -> Image.Image:
    """Stretches a grayscale image to size x size (no letterbox, no crop).

    Why stretch: the studies' loaders (Keras `image_dataset_from_directory`,
    torchvision `Resize((s, s))`) stretch, so results stay comparable. Letterboxing would
    add black bars whose width encodes each source's aspect ratio, and in these datasets
    the source *is* the class (COVID images come from other hospitals than Normal ones):
    the bars would be one more shortcut for a model to learn. D4 is square anyway.
    """
    if gray.size == (size, size):
        return gray
    return gray.resize((size, size), _RESAMPLE, reducing_gap=_REDUCING_GAP)


def to_uint8(array: np.ndarray) -> np.ndarray:
    """Windows a high-bit-depth (or float) array linearly onto 0..255 by its own range."""
    array = np.asarray(array)
    if array.dtype == np.uint8:
        return array
    values = array.astype(np.float32)
    finite = np.isfinite(values)
    if not finite.all():
        values = np.where(finite, values, 0.0)
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(values.shape, np.uint8)
    scaled = (values - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _to_grayscale(image: Image.Image) -> Image.Image:
    """Any PIL mode -> mode "L" (see the module docstring for the rules)."""
    mode = image.mode
    if mode == "L":
        return image
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return Image.fromarray(to_uint8(np.asarray(image)))  # uint8 2-D -> mode "L"
    if mode == "P":
        has_alpha = "transparency" in image.info or image.palette.mode == "RGBA"
        image = image.convert("RGBA" if has_alpha else "RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("L")
    try:  # "1", RGB, RGBX, CMYK, YCbCr, ...: PIL's luma conversion
        return image.convert("L")
    except ValueError as error:
        raise DecodeError(f"unsupported image mode {mode!r}") from error


def decode_grayscale(data: bytes, *, size: int | None = None, source: str = "<bytes>") -> DecodedImage:
    """Decodes image bytes to uint8 grayscale, stretched to size x size if size is given.

    Raises DecodeError (naming `source`) for anything that is not a complete image of a
    supported format.
    """
    if not data:
        raise DecodeError(f"{source}: empty file")
    try:
        with warnings.catch_warnings():
            # DecompressionBombWarning (> 89 Mpx) is not an error for radiographs; the
            # hard limit (2x that) still raises, and is reported as a skip.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in SUPPORTED_FORMATS:
                raise DecodeError(
                    f"{source}: unsupported image format {image.format!r} "
                    f"(supported: {', '.join(sorted(SUPPORTED_FORMATS))})"
                )
            orientation = _orientation(image)
            width, height = image.size
            if orientation in (5, 6, 7, 8):
                width, height = height, width
            if size is not None and image.format in ("JPEG", "MPO"):
                # DCT-domain downscaling: never materialises the full-size image.
                gap = int(size * _REDUCING_GAP)
                image.draft("L", (gap, gap))
            if ImageFile.LOAD_TRUNCATED_IMAGES:
                raise DecodeError(
                    "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set; refusing to decode silently-truncated files"
                )
            image.load()
            decoded_size = (int(image.size[1]), int(image.size[0]))
            gray = _to_grayscale(image)
            if size is not None:
                gray = resize_square(gray, size)
            method = _TRANSPOSE.get(orientation)
            if method is not None:
                gray = gray.transpose(method)
            pixels = np.array(gray, dtype=np.uint8)
    except DecodeError:
        raise
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
        TypeError,
        EOFError,
        Image.DecompressionBombError,
        MemoryError,
    ) as error:
        raise DecodeError(f"{source}: not a readable image ({type(error).__name__}: {error})") from error
    return DecodedImage(pixels=pixels, original_size=(int(height), int(width)), decoded_size=decoded_size)


def read_grayscale(path: str | os.PathLike, *, size: int | None = None) -> DecodedImage:
    """Reads and decodes one file (see `decode_grayscale`)."""
    path = Path(path)
    try:
        data = read_regular_file(path)
    except OSError as error:
        raise DecodeError(f"{path}: cannot read ({error})") from error
    return decode_grayscale(data, size=size, source=str(path))


def decode_mask(data: bytes, *, size: int, source: str = "<bytes>") -> np.ndarray:
    """Decodes a binary mask (e.g. D4's lung masks) to uint8 {0, 255} at size x size.

    Bilinear resize then threshold at half: smoother borders than nearest-neighbour
    and still strictly binary.
    """
    gray = decode_grayscale(data, size=size, source=source).pixels
    return np.where(gray >= 128, 255, 0).astype(np.uint8)


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # noqa: BLE001 - a broken EXIF block must not lose the image
        return 1
