"""image_io: reading (8/16-bit, grey, alpha, EXIF), bad files, listing, writing, conversions."""
import os

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from datapipe import image_io as io_


def _rgb(h=12, w=20, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _cv2_write(path, arr):
    assert cv2.imwrite(str(path), arr)
    return path


# ---------------------------------------------------------------- reading

def test_read_8bit_png_is_rgb_float(tmp_path):
    rgb = _rgb()
    path = _cv2_write(tmp_path / "a.png", rgb[:, :, ::-1])  # OpenCV writes BGR
    img = io_.read_image(path)
    assert img.dtype == torch.float32 and img.shape == (3, 12, 20)
    torch.testing.assert_close(img, torch.from_numpy(rgb).permute(2, 0, 1).float() / 255, rtol=0, atol=0)


def test_read_16bit_png_divides_by_65535(tmp_path):
    rgb16 = np.random.default_rng(1).integers(0, 65536, (8, 10, 3), dtype=np.uint16)
    path = _cv2_write(tmp_path / "a16.png", rgb16[:, :, ::-1])
    img = io_.read_image(path)
    expected = torch.from_numpy(rgb16.astype(np.float32) / 65535).permute(2, 0, 1)
    torch.testing.assert_close(img, expected, rtol=0, atol=0)
    bgr8 = io_.read_image_uint8_bgr(path)
    assert bgr8.dtype == np.uint8
    np.testing.assert_array_equal(bgr8, np.rint(rgb16[:, :, ::-1] / 65535 * 255).astype(np.uint8))


def test_read_grey_is_replicated(tmp_path):
    grey = _rgb()[:, :, 0]
    img = io_.read_image(_cv2_write(tmp_path / "g.png", grey))
    assert img.shape == (3, 12, 20)
    for c in range(3):
        torch.testing.assert_close(img[c], torch.from_numpy(grey).float() / 255, rtol=0, atol=0)


def test_read_rgba_drops_alpha_with_warning(tmp_path):
    rgb = _rgb()
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 7, np.uint8)], axis=2)
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(path)
    with pytest.warns(UserWarning, match="alpha.png.*transparent"):
        img = io_.read_image(path)
    np.testing.assert_array_equal(io_.tensor_to_uint8(img), rgb)


def _warnings_of(path):
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        io_.read_image(path)
    return [str(w.message) for w in caught]


def test_alpha_warning_only_when_some_pixel_is_not_opaque(tmp_path):
    """An opaque alpha channel (saved by many editors) is dropped silently; one translucent
    pixel, in RGBA, grey+alpha, 16-bit or palette transparency, is reported."""
    rgb = _rgb()
    opaque = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    Image.fromarray(opaque, "RGBA").save(tmp_path / "opaque.png")
    Image.fromarray(np.stack([rgb[:, :, 0], np.full(rgb.shape[:2], 255, np.uint8)], 2), "LA").save(
        tmp_path / "opaque_la.png")
    opaque16 = np.full((8, 8, 4), 65535, np.uint16)
    _cv2_write(tmp_path / "opaque16.png", opaque16)
    palette = Image.fromarray(np.zeros((8, 8), np.uint8), "P")
    palette.putpalette([0, 0, 0, 255, 0, 0] * 128)
    palette.save(tmp_path / "palette_unused.png", transparency=1)  # index 1 is transparent, never used
    for name in ("opaque.png", "opaque_la.png", "opaque16.png", "palette_unused.png"):
        assert _warnings_of(tmp_path / name) == [], name

    opaque[3, 4, 3] = 254
    Image.fromarray(opaque, "RGBA").save(tmp_path / "one.png")
    opaque16[2, 2, 3] = 0
    _cv2_write(tmp_path / "one16.png", opaque16)
    palette.save(tmp_path / "palette_used.png", transparency=0)
    for name in ("one.png", "one16.png", "palette_used.png"):
        found = _warnings_of(tmp_path / name)
        assert len(found) == 1 and name in found[0] and "alpha channel is dropped" in found[0], name


@pytest.mark.parametrize("orientation", range(1, 9))
def test_read_applies_exif_orientation(tmp_path, orientation):
    rgb = np.zeros((16, 24, 3), np.uint8)
    rgb[:8, :8] = (255, 0, 0)  # red block top-left, green block top-right
    rgb[:8, 16:] = (0, 255, 0)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "rot.jpg"
    Image.fromarray(rgb).save(path, quality=100, exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB")).astype(int)
    got = io_.tensor_to_uint8(io_.read_image(path)).astype(int)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 2
    assert got.shape[:2] == ((24, 16) if orientation >= 5 else (16, 24))


@pytest.mark.parametrize("content, reason", [
    (b"", "empty"),
    (b"hello, I am a text file\n", "not an image"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "truncated PNG data: the file ends inside its IHDR chunk"),
])
def test_bad_files_raise_clear_errors(tmp_path, content, reason):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(io_.ImageReadError, match=reason) as info:
        io_.read_image(path)
    assert "bad.png" in str(info.value)


@pytest.mark.parametrize("ext, reason", [(".png", "truncated PNG"), (".jpg", "truncated JPEG"),
                                         (".webp", "truncated WebP")])
def test_truncated_files(tmp_path, ext, reason):
    ok, encoded = cv2.imencode(ext, _rgb(64, 64))
    path = tmp_path / f"cut{ext}"
    path.write_bytes(encoded.tobytes()[: len(encoded) // 2])
    with pytest.raises(io_.ImageReadError, match=reason):
        io_.read_image(path)


def _claiming(ext: str, side: int) -> bytes:
    """A complete, well-formed small file whose header says side x side: a JPEG closed by its
    end marker (libjpeg decodes it, warning 'premature end of data segment'), a PNG with a valid
    header CRC and an IEND chunk."""
    import zlib
    data = bytearray(cv2.imencode(ext, _rgb(32, 32))[1].tobytes())
    if ext == ".jpg":
        sof = data.find(b"\xff\xc0")
        data[sof + 5:sof + 9] = side.to_bytes(2, "big") * 2
    else:
        data[16:24] = side.to_bytes(4, "big") * 2
        data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_a_header_claiming_more_than_the_data_holds_is_truncated_and_not_decoded(tmp_path, monkeypatch, ext):
    """A few KB claiming 6000x6000 px is refused from its bytes, before any decoder runs."""
    path = tmp_path / f"claims{ext}"
    path.write_bytes(_claiming(ext, 6000))
    assert path.stat().st_size < 8000
    monkeypatch.setattr(io_.cv2, "imdecode", lambda *a: pytest.fail("decoded"))
    for read in (io_.read_image, io_.read_image_uint8_bgr):
        with pytest.raises(io_.ImageReadError, match=r"truncated .*6000x6000") as info:
            read(path)
        assert f"claims{ext}" in str(info.value) and "not decoded" in str(info.value)


def test_a_png_without_iend_is_truncated(tmp_path):
    data = cv2.imencode(".png", _rgb(16, 16))[1].tobytes()
    assert data.endswith(b"IEND\xaeB`\x82")
    (tmp_path / "no_end.png").write_bytes(data[:-12])
    with pytest.raises(io_.ImageReadError, match="no_end.png.*truncated PNG data: the file ends before its IEND"):
        io_.read_image(tmp_path / "no_end.png")


@pytest.mark.parametrize("ext, options", [
    (".jpg", {"quality": 1, "optimize": True}), (".jpg", {"quality": 1, "optimize": True, "progressive": True}),
    (".jpg", {"quality": 100, "subsampling": 0, "optimize": True}), (".png", {"optimize": True}),
])
@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_the_size_bounds_pass_the_most_compressible_images(tmp_path, ext, options, mode):
    """Flat black images with optimised Huffman tables / maximal deflate come closest to the
    bounds (a PNG within 7 %); they must still read."""
    path = tmp_path / f"black{ext}"
    Image.new(mode, (2000, 1200)).save(path, **options)
    assert io_.read_image(path).shape == (3, 1200, 2000)


def test_missing_and_directory(tmp_path):
    with pytest.raises(io_.ImageReadError, match="not found"):
        io_.read_image(tmp_path / "nope.png")
    with pytest.raises(io_.ImageReadError, match="directory"):
        io_.read_image_uint8_bgr(tmp_path)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs a non-root POSIX user")
def test_unreadable_file(tmp_path):
    path = _cv2_write(tmp_path / "locked.png", _rgb())
    path.chmod(0)
    try:
        with pytest.raises(io_.ImageReadError, match="permission denied"):
            io_.read_image(path)
    finally:
        path.chmod(0o644)


# ---------------------------------------------------------------- listing

def test_list_images_sorted_filtered_recursive(tmp_path):
    for rel in ["b.png", "A.JPG", "c.jpeg", "notes.txt", ".hidden.png", "sub/z.bmp", "sub/a.webp",
                ".git/x.png", "a.tiff"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    flat = [p.relative_to(tmp_path).as_posix() for p in io_.list_images(tmp_path)]
    assert flat == ["A.JPG", "a.tiff", "b.png", "c.jpeg"]
    deep = [p.relative_to(tmp_path).as_posix() for p in io_.list_images(tmp_path, recursive=True)]
    assert deep == ["A.JPG", "a.tiff", "b.png", "c.jpeg", "sub/a.webp", "sub/z.bmp"]
    with pytest.raises(NotADirectoryError, match="missing"):
        io_.list_images(tmp_path / "missing")


# ---------------------------------------------------------------- writing and conversions

def test_write_read_round_trip(tmp_path):
    img = torch.rand(3, 10, 14, generator=torch.Generator().manual_seed(0))
    path = io_.write_image(tmp_path / "deep" / "dir" / "out.png", img)
    back = io_.read_image(path)
    torch.testing.assert_close(back, torch.round(img * 255) / 255, rtol=0, atol=1e-7)
    rgb = _rgb()
    np.testing.assert_array_equal(io_.tensor_to_uint8(io_.read_image(io_.write_image(tmp_path / "u.png", rgb))), rgb)
    jpg = io_.read_image(io_.write_image(tmp_path / "q.jpg", img, jpeg_quality=90))
    assert jpg.shape == img.shape


def test_write_errors(tmp_path):
    img = torch.zeros(3, 4, 4)
    with pytest.raises(ValueError, match="extension"):
        io_.write_image(tmp_path / "x.gif", img)
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        io_.write_image(tmp_path / "x.png", torch.zeros(1, 3, 4, 4))
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(io_.ImageWriteError, match="x.png"):
        io_.write_image(tmp_path / "file" / "x.png", img)  # parent is a file


def test_tensor_uint8_conversions():
    img = torch.tensor([-0.5, 0.0, 0.5 / 255, 1.5 / 255, 2.5 / 255, 1.0, 2.0, float("nan")])
    img = img.view(1, 1, 8).expand(3, 1, 8)
    out = io_.tensor_to_uint8(img)
    assert out.shape == (1, 8, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, :, 0], [0, 0, 0, 2, 2, 255, 255, 0])  # half to even
    rgb = _rgb()
    t = io_.uint8_to_tensor(rgb)
    np.testing.assert_array_equal(io_.tensor_to_uint8(t), rgb)
    np.testing.assert_array_equal(io_.tensor_to_uint8(t, bgr=True), rgb[:, :, ::-1])
    torch.testing.assert_close(io_.uint8_to_tensor(np.ascontiguousarray(rgb[:, :, ::-1]), bgr=True), t)
    hwc = io_.tensor_to_hwc(t)
    torch.testing.assert_close(io_.hwc_to_tensor(hwc), t, rtol=0, atol=0)
    with pytest.raises(ValueError, match="uint8"):
        io_.uint8_to_tensor(rgb.astype(np.float32))


def test_gif_first_frame_and_animation_reported(tmp_path):
    from PIL import Image
    frames = [Image.fromarray(np.full((6, 5, 3), v, np.uint8)) for v in (10, 250, 90)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    with pytest.warns(UserWarning, match="animated GIF with 3 frames"):
        img = io_.read_image(tmp_path / "a.gif")
    assert img.shape == (3, 6, 5) and torch.allclose(img, torch.full_like(img, 10 / 255))
    assert tmp_path / "a.gif" in io_.list_images(tmp_path)


def test_grey_detection_and_conversion():
    grey = torch.rand(1, 8, 8).expand(3, 8, 8)
    assert io_.is_grey(grey) and not io_.is_grey(torch.rand(3, 8, 8))
    out = io_.to_grey(torch.rand(2, 3, 8, 8))
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])


def test_image_size_reads_past_the_first_64_kib_when_the_header_needs_it(tmp_path):
    """WebP files and TIFFs with their directory at the end are sized without being decoded."""
    from PIL import Image

    from datapipe.image_io import image_size
    noise = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)  # incompressible
    for name in ("a.webp", "a.tif"):
        Image.fromarray(noise).save(tmp_path / name, **({"lossless": True} if name.endswith("webp") else {}))
        assert (tmp_path / name).stat().st_size > 1 << 16
        assert image_size(tmp_path / name) == (400, 300), name
