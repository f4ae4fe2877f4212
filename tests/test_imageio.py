"""Real-world files: modes, alpha, 16 bits, EXIF orientation, ICC, DPI, every format, atomic
writes, and one-line errors for every bad input."""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import replace

import cv2
import numpy as np
import pytest
from conftest import listing, photo_like
from PIL import ExifTags, Image, ImageCms, ImageOps

from liif_cli.errors import ImageReadError, ImageWriteError, UsageError
from liif_cli.io import images as imageio
from liif_cli.io import stdio
from liif_cli.io.formats import FORMATS
from liif_cli.io.images import ImageData, read_image, write_image

SRGB_ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def rgb(h=9, w=11, seed=0):
    return photo_like(h, w, seed)


# ----------------------------------------------------------------------------------------------
# reading modes

def test_rgba_and_la_keep_alpha(tmp_path):
    px = rgb()
    alpha = np.arange(99, dtype=np.uint8).reshape(9, 11)
    Image.fromarray(np.dstack([px, alpha])).save(tmp_path / "a.png")
    Image.fromarray(np.dstack([px[:, :, 0], alpha]), mode="LA").save(tmp_path / "la.png")
    a, la = read_image(tmp_path / "a.png"), read_image(tmp_path / "la.png")
    assert a.channels == 3 and np.array_equal(a.pixels, px) and np.array_equal(a.alpha, alpha)
    assert la.channels == 1 and np.array_equal(la.pixels[:, :, 0], px[:, :, 0])
    assert np.array_equal(la.alpha, alpha) and la.describe() == "11×9 grey+alpha 8-bit"


def test_palette_images(tmp_path):
    px = rgb()
    Image.fromarray(px).quantize(16).save(tmp_path / "p.png")
    im = Image.fromarray(px).quantize(16)
    im.info["transparency"] = 0
    im.save(tmp_path / "pt.png", transparency=0)
    p, pt = read_image(tmp_path / "p.png"), read_image(tmp_path / "pt.png")
    expected = np.asarray(Image.open(tmp_path / "p.png").convert("RGB"))
    assert p.channels == 3 and p.alpha is None and np.array_equal(p.pixels, expected)
    assert pt.channels == 3 and pt.alpha is not None and set(np.unique(pt.alpha)) <= {0, 255}
    assert (pt.alpha == 0).any()


def test_an_animation_says_only_its_first_frame_is_upscaled(tmp_path):
    """An animated GIF (or APNG) becomes a still PNG: one note says so, and where all frames go
    (`liif video`); a one-frame GIF says nothing."""
    import warnings

    from liif_cli.errors import LiifWarning

    frames = [Image.fromarray(rgb(seed=k)) for k in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "anim.png", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "still.gif")
    for name in ("anim.gif", "anim.png", "still.gif"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            img = read_image(tmp_path / name)
        said = [str(w.message) for w in caught if issubclass(w.category, LiifWarning)]
        assert np.array_equal(img.pixels, rgb(seed=0))  # the first frame
        if name.startswith("anim"):
            assert len(said) == 1 and "3 frames: only the first" in said[0], said
            assert "liif video" in said[0] and name in said[0]
        else:
            assert said == []


def test_grey_and_bilevel_are_one_channel(tmp_path):
    px = rgb()[:, :, 0]
    Image.fromarray(px).save(tmp_path / "g.png")
    Image.fromarray(px > 128).save(tmp_path / "b.png")
    g, b = read_image(tmp_path / "g.png"), read_image(tmp_path / "b.png")
    assert g.channels == 1 and np.array_equal(g.pixels[:, :, 0], px)
    assert b.channels == 1 and b.pixels.dtype == np.uint8 and set(np.unique(b.pixels)) <= {0, 255}


def test_cmyk_becomes_rgb_without_its_profile(tmp_path):
    Image.fromarray(rgb()).convert("CMYK").save(tmp_path / "c.jpg", icc_profile=b"not rgb")
    c = read_image(tmp_path / "c.jpg")
    assert c.channels == 3 and c.icc_profile is None


@pytest.mark.parametrize("suffix", [".png", ".tif"])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_16_bit_in_is_16_bit_out(tmp_path, suffix, channels):
    rng = np.random.default_rng(channels)
    arr = rng.integers(0, 65536, (7, 10, channels), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / f"x{suffix}"), arr if channels > 1 else arr[:, :, 0])
    img = read_image(tmp_path / f"x{suffix}")
    assert img.bit_depth == 16
    colour = arr[:, :, 2::-1] if channels >= 3 else arr[:, :, :1]  # OpenCV files are BGR
    assert np.array_equal(img.pixels, colour)
    if channels == 4:
        assert np.array_equal(img.alpha, arr[:, :, 3])
    write_image(tmp_path / f"y{suffix}", img)
    back = read_image(tmp_path / f"y{suffix}")
    assert back.bit_depth == 16 and np.array_equal(back.pixels, img.pixels)
    assert (back.alpha is None) == (img.alpha is None)


def test_16_bit_grey_alpha_png_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    img = ImageData(rng.integers(0, 65536, (6, 5, 1), dtype=np.uint16),
                    rng.integers(0, 65536, (6, 5), dtype=np.uint16), dpi=(300.0, 300.0))
    write_image(tmp_path / "la16.png", img)
    back = read_image(tmp_path / "la16.png")
    assert back.channels == 1 and back.bit_depth == 16
    assert np.array_equal(back.pixels, img.pixels) and np.array_equal(back.alpha, img.alpha)
    assert back.dpi == pytest.approx((300, 300), abs=0.02)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_applied(tmp_path, orientation):
    px = rgb(6, 10)
    alpha = np.arange(60, dtype=np.uint8).reshape(6, 10)
    im = Image.fromarray(np.dstack([px, alpha]))
    exif = Image.Exif()
    exif[imageio.EXIF_ORIENTATION] = orientation
    im.save(tmp_path / "o.png", exif=exif)
    got = read_image(tmp_path / "o.png")
    upright = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "o.png")))
    assert np.array_equal(got.pixels, upright[:, :, :3])
    assert np.array_equal(got.alpha, upright[:, :, 3])
    assert got.pixels.shape[:2] == ((10, 6) if orientation >= 5 else (6, 10))


# ----------------------------------------------------------------------------------------------
# metadata

@pytest.mark.parametrize("suffix,bits", [(".png", 8), (".jpg", 8), (".webp", 8), (".tif", 8),
                                         (".png", 16), (".tif", 16)])
def test_icc_profile_carried(tmp_path, suffix, bits):
    px = rgb().astype(np.uint16) * 257 if bits == 16 else rgb()
    write_image(tmp_path / f"out{suffix}", ImageData(px, icc_profile=SRGB_ICC))
    back = read_image(tmp_path / f"out{suffix}")
    assert back.icc_profile == SRGB_ICC and back.bit_depth == (bits if suffix != ".jpg" else 8)
    with Image.open(tmp_path / f"out{suffix}") as im:  # other readers see it too
        assert im.info.get("icc_profile") == SRGB_ICC


@pytest.mark.parametrize("suffix,bits", [(".png", 8), (".jpg", 8), (".tif", 8), (".bmp", 8),
                                         (".png", 16), (".tif", 16)])
def test_dpi_carried(tmp_path, suffix, bits):
    px = rgb().astype(np.uint16) * 257 if bits == 16 else rgb()
    write_image(tmp_path / f"out{suffix}", ImageData(px, dpi=(540.0, 301.5)))
    tol = 0.5 if suffix == ".jpg" else 0.02  # JPEG stores whole dots per inch; PNG per metre
    assert read_image(tmp_path / f"out{suffix}").dpi == pytest.approx((540, 301.5), abs=tol)


def test_16_bit_grey_alpha_tiff_with_icc_dpi_xmp(tmp_path):
    """tifffile writes what OpenCV could not (16-bit grey+alpha TIFF), with every tag."""
    import tifffile

    rng = np.random.default_rng(1)
    img = ImageData(rng.integers(0, 65536, (6, 5, 1), dtype=np.uint16),
                    rng.integers(0, 65536, (6, 5), dtype=np.uint16), icc_profile=SRGB_ICC,
                    dpi=(150.0, 75.5))
    write_image(tmp_path / "la16.tif", replace(img, xmp=PLAIN_XMP))
    back = read_image(tmp_path / "la16.tif")
    assert back.describe() == "5×6 grey+alpha 16-bit"
    assert np.array_equal(back.pixels, img.pixels) and np.array_equal(back.alpha, img.alpha)
    assert back.icc_profile == SRGB_ICC and back.xmp == PLAIN_XMP
    assert back.dpi == pytest.approx((150, 75.5), abs=0.01)
    with tifffile.TiffFile(tmp_path / "la16.tif") as tif:  # another reader sees the same
        page = tif.pages.first
        assert page.shape == (6, 5, 2) and page.extrasamples == (2,)  # unassociated alpha
        assert page.tags[34675].value == SRGB_ICC


XMP = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/'
       b'22-rdf-syntax-ns#"><rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" '
       b'xmlns:dc="http://purl.org/dc/elements/1.1/" tiff:Orientation="6"><dc:creator>'
       b'liif test</dc:creator></rdf:Description></rdf:RDF></x:xmpmeta>')
PLAIN_XMP = XMP.replace(b' tiff:Orientation="6"', b"")  # readers rotate by XMP's orientation too
THUMB = b"\xff\xd8THUMBNAIL-OF-THE-OLD-IMAGE\xff\xd9"


def exif_with_thumbnail(orientation: int, w: int, h: int) -> bytes:
    """An EXIF block as cameras write it: IFD0 (Make, Orientation), an Exif IFD with the pixel
    size, and IFD1 pointing at a JPEG thumbnail (little-endian TIFF layout, TIFF 6.0 §2)."""
    def ifd(entries, next_ifd):
        body = b"".join(struct.pack("<HHI", tag, kind, count) + value
                        for tag, kind, count, value in entries)
        return struct.pack("<H", len(entries)) + body + struct.pack("<I", next_ifd)

    make = b"LiifCam\x00"
    o_ifd0 = 8
    o_exif = o_ifd0 + 2 + 12 * 3 + 4
    o_ifd1 = o_exif + 2 + 12 * 2 + 4
    o_make = o_ifd1 + 2 + 12 * 2 + 4
    o_thumb = o_make + len(make)
    ifd0 = ifd([(0x010F, 2, len(make), struct.pack("<I", o_make)),
                (0x0112, 3, 1, struct.pack("<HH", orientation, 0)),
                (0x8769, 4, 1, struct.pack("<I", o_exif))], o_ifd1)
    exif_ifd = ifd([(0xA002, 4, 1, struct.pack("<I", w)), (0xA003, 4, 1, struct.pack("<I", h))], 0)
    ifd1 = ifd([(0x0201, 4, 1, struct.pack("<I", o_thumb)),
                (0x0202, 4, 1, struct.pack("<I", len(THUMB)))], 0)
    return (b"Exif\x00\x00II*\x00" + struct.pack("<I", 8) + ifd0 + exif_ifd + ifd1 + make
            + THUMB)


@pytest.fixture
def camera_jpeg(tmp_path):
    """A 10×6 JPEG stored sideways (orientation 6) with EXIF, a thumbnail and XMP."""
    path = tmp_path / "camera.jpg"
    Image.fromarray(rgb(6, 10)).save(path, exif=exif_with_thumbnail(6, 10, 6), xmp=XMP,
                                     quality=95)
    with Image.open(path) as im:  # the fixture is what it claims to be
        exif = im.getexif()
        assert exif[imageio.EXIF_ORIENTATION] == 6 and exif.get_ifd(ExifTags.IFD.IFD1)
        assert THUMB in path.read_bytes()
    return path


@pytest.mark.parametrize("suffix,bits", [(".png", 8), (".jpg", 8), (".webp", 8), (".png", 16)])
def test_exif_kept_with_orientation_1_and_no_thumbnail(tmp_path, camera_jpeg, suffix, bits):
    img = read_image(camera_jpeg)
    assert img.pixels.shape[:2] == (10, 6)  # orientation 6 applied: now upright
    if bits == 16:
        img = ImageData(img.pixels.astype(np.uint16) * 257, exif=img.exif, xmp=img.xmp)
    big = ImageData(np.repeat(np.repeat(img.pixels, 2, 0), 3, 1), exif=img.exif, xmp=img.xmp,
                    dpi=(144.0, 144.0))  # a 18×20 "upscale"
    out = write_image(tmp_path / f"out{suffix}", big)
    with Image.open(out) as im:  # as any other reader sees it
        im.load()
        exif = im.getexif()
        assert exif[0x010F] == "LiifCam"  # the camera's tags are kept
        assert exif[imageio.EXIF_ORIENTATION] == 1  # pixels are upright: no second rotation
        assert dict(exif.get_ifd(ExifTags.IFD.Exif)) == {0xA002: 18, 0xA003: 20}  # true size
        assert not exif.get_ifd(ExifTags.IFD.IFD1)  # no thumbnail IFD
        assert np.asarray(ImageOps.exif_transpose(im)).shape[:2] == (20, 18)
    assert THUMB not in out.read_bytes()
    back = read_image(out)
    assert back.pixels.shape[:2] == (20, 18) and back.bit_depth == (bits if suffix == ".png"
                                                                     else 8)
    assert b'tiff:Orientation="1"' in back.xmp and b"liif test" in back.xmp


def test_exif_resolution_scales_with_the_pixels_where_only_the_exif_has_one(tmp_path):
    """A WebP has no DPI of its own, only its EXIF's: upscaled ×2, the EXIF said 72 dpi still
    (the print size doubled), though its pixel size tags were made true."""
    exif = Image.Exif()
    exif[0x011A], exif[0x011B], exif[0x0128] = 72.0, 72.0, 2  # X/Y resolution, inches
    sub = exif.get_ifd(ExifTags.IFD.Exif)
    sub[0xA002], sub[0xA003] = 8, 6
    Image.fromarray(rgb()[:6, :8]).save(tmp_path / "in.webp", exif=exif.tobytes())
    img = read_image(tmp_path / "in.webp")
    assert img.dpi is None and img.exif
    big = ImageData(np.repeat(np.repeat(img.pixels, 2, 0), 2, 1), exif=img.exif)
    with Image.open(write_image(tmp_path / "out.webp", big)) as im:
        back = im.getexif()
        assert (back[0x011A], back[0x011B]) == (144.0, 144.0)
        assert dict(back.get_ifd(ExifTags.IFD.Exif)) == {0xA002: 16, 0xA003: 12}


@pytest.mark.parametrize("suffix,bits", [(".png", 8), (".jpg", 8), (".webp", 8), (".tif", 8),
                                         (".png", 16), (".tif", 16)])
def test_xmp_carried(tmp_path, suffix, bits):
    px = rgb().astype(np.uint16) * 257 if bits == 16 else rgb()
    write_image(tmp_path / f"out{suffix}", ImageData(px, xmp=PLAIN_XMP))
    back = read_image(tmp_path / f"out{suffix}")
    assert back.xmp == PLAIN_XMP
    with Image.open(tmp_path / f"out{suffix}") as im:  # where other readers look for it
        raw = im.info.get("xmp") or im.info.get("XML:com.adobe.xmp")
        assert (raw.encode() if isinstance(raw, str) else raw) == PLAIN_XMP


def test_bmp_keeps_no_exif_or_xmp_and_says_nothing(tmp_path, camera_jpeg):
    out = write_image(tmp_path / "out.bmp", read_image(camera_jpeg))
    back = read_image(out)
    assert back.exif is None and back.xmp is None and back.pixels.shape[:2] == (10, 6)


def test_bytes_in_bytes_out(camera_jpeg):
    img = imageio.read_image_bytes(camera_jpeg.read_bytes(), name="stdin")
    assert img.pixels.shape[:2] == (10, 6) and img.exif is not None
    for fmt in ("png", "PNG", ".tif", "jpeg", "webp", "bmp"):
        blob = imageio.encode_image(img, fmt)
        back = imageio.read_image_bytes(blob)
        assert back.pixels.shape == img.pixels.shape
    assert np.array_equal(imageio.read_image_bytes(imageio.encode_image(img)).pixels, img.pixels)
    deep = ImageData(np.arange(60, dtype=np.uint16).reshape(5, 4, 3) * 1000,
                     np.full((5, 4), 65535, np.uint16), icc_profile=SRGB_ICC)
    for fmt in ("png", "tiff"):  # 16 bits through bytes both ways (OpenCV / tifffile)
        back = imageio.read_image_bytes(imageio.encode_image(deep, fmt))
        assert back.bit_depth == 16 and np.array_equal(back.pixels, deep.pixels)
        assert np.array_equal(back.alpha, deep.alpha) and back.icc_profile == SRGB_ICC
    with pytest.raises(UsageError, match="unknown --format 'gif'"):
        imageio.encode_image(img, "gif")
    with pytest.raises(ImageReadError, match="stdin is empty"):
        imageio.read_image_bytes(b"", name="stdin")
    with pytest.raises(ImageReadError, match="cannot read stdin: not an image"):
        imageio.read_image_bytes(b"hello", name="stdin")
    with pytest.raises(ImageReadError, match="cannot read stdin: "):
        imageio.read_image_bytes(camera_jpeg.read_bytes()[:300], name="stdin")


def test_a_pipe_named_as_the_input_is_read_not_called_empty(tmp_path):
    """`liif upscale <(curl …)`: /dev/fd/63 is a pipe, whose size says 0; it is read whole (16
    bits too), not refused as an empty file."""
    import threading

    for name, px in (("rgb.png", rgb()), ("deep.png", rgb().astype(np.uint16) * 257)):
        fifo = tmp_path / f"fifo-{name}"
        os.mkfifo(fifo)
        blob = imageio.encode_image(ImageData(px), "png")
        feeder = threading.Thread(target=fifo.write_bytes, args=(blob,), daemon=True)
        feeder.start()
        try:
            back = read_image(fifo)
        finally:
            feeder.join(5)
        assert np.array_equal(back.pixels, px)
    fifo = tmp_path / "fifo-empty"
    os.mkfifo(fifo)
    feeder = threading.Thread(target=fifo.write_bytes, args=(b"",), daemon=True)
    feeder.start()
    with pytest.raises(ImageReadError, match="input is empty"):
        read_image(fifo)
    feeder.join(5)


def test_stdout_that_fails_or_is_closed_is_one_error(monkeypatch):
    """A full disk behind `> out.png` is a failed write (exit 1), not an internal error; a closed
    stdout (`>&-`) is refused before any work, as a terminal is."""
    import io
    import sys

    from liif_cli.errors import OutputWriteError

    class Full(io.BytesIO):
        def write(self, data):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(Full()))
    with pytest.raises(OutputWriteError, match="cannot write to stdout: No space left"):
        stdio.write_stdout(ImageData(rgb()))
    monkeypatch.setattr(sys, "stdout", None)
    with pytest.raises(UsageError, match="stdout is closed"):
        stdio.check_stdout()
    monkeypatch.setattr(sys, "stdin", None)
    with pytest.raises(UsageError, match="stdin is closed"):
        stdio.read_stdin()


# ----------------------------------------------------------------------------------------------
# writing

@pytest.mark.parametrize("suffix", sorted(FORMATS))
@pytest.mark.parametrize("kind", ["rgb", "rgba", "grey", "grey+alpha", "rgb16", "rgba16",
                                  "grey+alpha16"])
def test_every_format_writes_every_kind(tmp_path, suffix, kind):
    px = rgb()
    if kind.startswith("grey"):
        px = px[:, :, :1]
    if kind.endswith("16"):
        px = px.astype(np.uint16) * 257
    alpha = np.full(px.shape[:2], 200, px.dtype) if "a" in kind.replace("grey", "") else None
    path = write_image(tmp_path / f"out{suffix}", ImageData(px, alpha))
    back = read_image(path)
    fmt, allows16, allows_alpha = FORMATS[suffix]
    assert back.pixels.shape[:2] == px.shape[:2]
    assert back.bit_depth == (16 if allows16 and px.dtype == np.uint16 else 8)
    assert (back.alpha is not None) == (alpha is not None and allows_alpha)
    if fmt not in ("JPEG", "WEBP"):  # lossless: exactly the pixels (or their 8-bit rounding)
        same = back.bit_depth == 16 or px.dtype == np.uint8
        assert np.array_equal(back.pixels, px if same else imageio.to_8bit(px))
        if back.alpha is not None:
            assert np.array_equal(back.alpha, alpha if same else imageio.to_8bit(alpha))
    if fmt != "WEBP":  # WebP has no grey mode
        assert back.channels == px.shape[2]


def test_existing_output_untouched_without_overwrite(tmp_path):
    path = tmp_path / "out.png"
    path.write_bytes(b"precious")
    with pytest.raises(ImageWriteError, match="exists.*--overwrite"):
        write_image(path, ImageData(rgb()))
    assert path.read_bytes() == b"precious" and listing(tmp_path) == ["out.png"]
    write_image(path, ImageData(rgb()), overwrite=True)
    assert np.array_equal(read_image(path).pixels, rgb())


def test_output_appearing_during_the_write_is_not_clobbered(tmp_path, monkeypatch):
    path = tmp_path / "out.png"
    real = imageio._write_pil

    def racing_writer(tmp, *args):
        real(tmp, *args)
        path.write_bytes(b"someone else's")  # another process wins the race

    monkeypatch.setattr(imageio, "_write_pil", racing_writer)
    with pytest.raises(ImageWriteError, match="exists"):
        write_image(path, ImageData(rgb()))
    assert path.read_bytes() == b"someone else's" and listing(tmp_path) == ["out.png"]


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_failed_write_leaves_nothing(tmp_path, monkeypatch, error):
    def failing_writer(tmp, *args):
        with open(tmp, "wb") as f:
            f.write(b"half an image")
        raise error

    monkeypatch.setattr(imageio, "_write_pil", failing_writer)
    expected = ImageWriteError if isinstance(error, OSError) else KeyboardInterrupt
    with pytest.raises(expected):
        write_image(tmp_path / "out.png", ImageData(rgb()))
    assert listing(tmp_path) == []


def test_written_files_get_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_image(tmp_path / "out.png", ImageData(rgb()))
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("name,message", [("out.xyz", "unknown output format '.xyz'"),
                                          ("out", "unknown output format '(no extension)'"),
                                          ("sub/", "output is a folder"),  # -o existing_folder/
                                          ("missing/out.png", "output folder does not exist")])
def test_unwritable_outputs_fail_before_work(tmp_path, name, message):
    (tmp_path / "sub").mkdir()
    with pytest.raises(ImageWriteError, match=message.replace("(", r"\(").replace(")", r"\)")):
        imageio.check_output_path(tmp_path / name, overwrite=False)
    assert listing(tmp_path) == ["sub"]


# ----------------------------------------------------------------------------------------------
# bad inputs

def _png_header_only(w: int, h: int) -> bytes:
    """A PNG that claims w×h pixels and holds almost none: the shape of a decompression bomb."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(bytes(1000))) + chunk(b"IEND", b""))


def test_bad_inputs_one_line_each(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("hello, not an image\n")
    Image.fromarray(rgb(64, 64)).save(tmp_path / "full.png")
    full = (tmp_path / "full.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(full[: len(full) // 2])
    Image.fromarray(rgb(64, 64)).save(tmp_path / "full.jpg")
    (tmp_path / "trunc.jpg").write_bytes((tmp_path / "full.jpg").read_bytes()[:300])
    cases = {"nope.png": "input not found", "empty.png": "empty", "text.png": "not an image",
             "trunc.png": "truncated", "trunc.jpg": "cannot read", ".": "folder"}
    for name, message in cases.items():
        with pytest.raises(ImageReadError, match=message) as e:
            read_image(tmp_path / name)
        assert "\n" not in str(e.value)


def test_decompression_bomb_refused_before_decoding(tmp_path):
    (tmp_path / "bomb.png").write_bytes(_png_header_only(30000, 30000))
    with pytest.raises(ImageReadError, match="900.0 MP, over the 200.0 MP safety limit"):
        read_image(tmp_path / "bomb.png")
    Image.fromarray(rgb(20, 20)).save(tmp_path / "small.png")
    with pytest.raises(ImageReadError, match="--max-input-pixels"):
        read_image(tmp_path / "small.png", max_pixels=399)
    assert read_image(tmp_path / "small.png", max_pixels=400).width == 20


def test_limit_replaces_pillows_own_bomb_check(tmp_path):
    # 200 MP is beyond Pillow's own bomb limit (2 × 89 MP): a raised limit must reach the decoder
    (tmp_path / "big.png").write_bytes(_png_header_only(20000, 10000))
    with pytest.raises(ImageReadError) as e:
        read_image(tmp_path / "big.png", max_pixels=10**9)
    assert "bomb" not in str(e.value)  # it got as far as decoding (and found no data)
    assert Image.MAX_IMAGE_PIXELS is not None  # Pillow's global left as it was
