"""Inpainting masks: generator ranges and seeding, hole detection, mask files, the test-set script."""
import csv
import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from datapipe.image_io import list_images, read_image, write_image
from datapipe.mask_io import (MaskError, apply_mask, check_mask, detect_black_holes, detect_white_scribbles,
                              find_mask, mask_to_tensor, read_mask, write_mask)
from datapipe.masks import (MASK_GENERATORS, BoxMaskGenerator, ExpandMaskGenerator, HalfMaskGenerator,
                            IrregularMaskGenerator, MixedMaskGenerator, OutpaintingMaskGenerator,
                            build_mask_generator)

REPO = Path(__file__).resolve().parents[1]
S = 256


def draws(generator, n, size=(S, S), seed=0):
    return [generator(*size, np.random.default_rng([seed, i])) for i in range(n)]


# --------------------------------------------------------------------------------------------
# Generators
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(MASK_GENERATORS))
def test_generator_binary_sized_seeded(name):
    gen = build_mask_generator(name)
    for size in [(S, S), (200, 240)]:
        a = gen(*size, np.random.default_rng(7))
        assert a.dtype == np.float32 and a.shape == size
        assert set(np.unique(a)) <= {0.0, 1.0} and 0 < a.mean() < 1
        np.testing.assert_array_equal(a, gen(*size, np.random.default_rng(7)))
    if name not in ("expand",):  # expand is deterministic
        masks = draws(gen, 6)
        assert any(not np.array_equal(masks[0], m) for m in masks[1:])


def test_generator_table_and_errors():
    with pytest.raises(ValueError, match="allowed"):
        build_mask_generator("squares")
    with pytest.raises(ValueError, match="bbox_max"):
        build_mask_generator("box", bbox_max=3)
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        BoxMaskGenerator()(S, S, None)
    with pytest.raises(ValueError, match="too small"):
        BoxMaskGenerator()(45, 45, np.random.default_rng(0))
    with pytest.raises(ValueError, match="masking_percent"):
        ExpandMaskGenerator(masking_percent=1.5)
    with pytest.raises(ValueError, match="unknown mask kinds"):
        MixedMaskGenerator(weights={"box": 1, "squares": 1})


def test_box_sides_and_margins():
    one_box = BoxMaskGenerator(min_times=1, max_times=1)
    sides = []
    for m in draws(one_box, 60):
        rows, cols = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
        h, w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
        assert m.sum() == h * w  # one filled rectangle
        sides += [h, w]
        assert rows[0] >= 10 and cols[0] >= 10 and rows[-1] <= S - 11 and cols[-1] <= S - 11
    assert 30 <= min(sides) and max(sides) <= 150 and max(sides) - min(sides) > 60
    for m in draws(BoxMaskGenerator(), 30):  # several boxes: still inside the margins
        assert not m[:10].any() and not m[-10:].any() and not m[:, :10].any() and not m[:, -10:].any()


def test_irregular_stroke_ranges():
    fractions = [m.mean() for m in draws(IrregularMaskGenerator(), 40)]
    assert min(fractions) > 0 and max(fractions) < 1 and np.std(fractions) > 0.02
    # Smallest settings: 0 or 1 stroke (min_times .. max_times + 1) of 1-5 segments, each of
    # length 10 and brush width 5, so a stroke spans at most 5 * 10 px plus the brush.
    tiny = IrregularMaskGenerator(max_angle=1, max_len=1, max_width=1, min_times=0, max_times=0)
    masks = draws(tiny, 30)
    assert any(m.sum() == 0 for m in masks) and any(m.sum() > 0 for m in masks)
    for m in masks:
        if m.any():
            rows, cols = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
            assert rows[-1] - rows[0] <= 56 and cols[-1] - cols[0] <= 56


def _strip_widths(m):
    """Widths of the fully masked left / top / right / bottom border strips."""
    full_cols, full_rows = m.all(0), m.all(1)
    lead = lambda v: int(np.argmin(v)) if not v.all() else len(v)  # noqa: E731
    return lead(full_cols), lead(full_rows), lead(full_cols[::-1]), lead(full_rows[::-1])


def test_outpainting_strip_widths():
    seen = set()
    for m in draws(OutpaintingMaskGenerator(), 60):
        widths = _strip_widths(m)
        assert any(widths)
        assert all(w == 0 or 10 <= w <= 75 for w in widths), widths
        rebuilt = np.zeros_like(m)
        left, top, right, bottom = widths
        rebuilt[:, :left] = rebuilt[:top] = rebuilt[:, S - right:] = rebuilt[S - bottom:] = 1
        np.testing.assert_array_equal(rebuilt, m)  # nothing but border strips
        seen.update(i for i, w in enumerate(widths) if w)
    assert seen == {0, 1, 2, 3}


def test_expand_keeps_centred_square():
    m = ExpandMaskGenerator(0.5)(S, S, np.random.default_rng(0))
    expected = np.ones((S, S), np.float32)
    expected[64:192, 64:192] = 0
    np.testing.assert_array_equal(m, expected)
    odd = ExpandMaskGenerator(0.5)(101, 101, np.random.default_rng(0))
    known = np.argwhere(odd == 0)  # round(50.5) = 50 px, starting at (101 - 50) // 2 = 25
    assert len(known) == 50 * 50 and known.min(0).tolist() == [25, 25] and known.max(0).tolist() == [74, 74]


def test_half_masks_half():
    kinds = set()
    for m in draws(HalfMaskGenerator(0.5), 12):
        assert m.mean() == 0.5
        if m[S // 2:].all():
            assert not m[:S // 2].any()
            kinds.add("bottom")
        else:
            assert m[:, S // 2:].all() and not m[:, :S // 2].any()
            kinds.add("right")
    assert kinds == {"bottom", "right"}


def test_mixed_uses_only_weighted_kinds():
    only_half = MixedMaskGenerator(weights={"half": 1.0, "box": 0.0})
    assert all(m.mean() == 0.5 for m in draws(only_half, 5))
    default = MixedMaskGenerator()
    picks = [default.choose(np.random.default_rng(i)) for i in range(300)]
    counts = {k: picks.count(k) for k in ("irregular", "box", "outpainting")}
    assert sum(counts.values()) == 300 and min(counts.values()) > 70


# --------------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------------

def test_black_holes_on_real_faces(face_images):
    paths = list_images(face_images / "masked" / "difface_inpainting_256")
    assert paths
    for path in paths:
        img = read_image(path)
        mask = detect_black_holes(img)
        assert mask.shape == (1, S, S) and mask.dtype == torch.float32
        assert 0.01 < mask.mean() < 0.9, path.name
        assert (img * mask).abs().max() == 0  # every detected pixel is exact black
        assert torch.equal(detect_black_holes(img[None])[0], mask)


def test_black_holes_nothing_without_exact_black():
    img = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.9 + 0.05
    img[:, 0, 0] = torch.tensor([0.0, 0.0, 1e-6])  # almost black is not a hole
    assert detect_black_holes(img).sum() == 0
    img[:, 5:9, 5:9] = 0
    assert detect_black_holes(img).sum() == 16


def test_white_scribbles_on_codeformer_faces(face_images):
    for path in list_images(face_images / "masked" / "codeformer_masked_faces"):
        img = read_image(path)
        mask = detect_white_scribbles(img)
        assert mask.shape == (1, 512, 512)
        assert 0.1 < mask.mean() < 0.6, path.name
        assert (img.amin(0, keepdim=True) * mask).sum() == mask.sum()  # holes are white
        assert detect_black_holes(img).mean() < 0.25  # the other detector does not see them


def test_white_scribbles_drop_specks_and_dilate():
    img = torch.full((3, 64, 64), 0.4)
    img[:, 10:30, 10:40] = 1.0  # a stroke of 600 px
    img[:, 50, 50] = 1.0  # a saturated speck
    mask = detect_white_scribbles(img)
    assert mask.sum() == 600 and mask[0, 50, 50] == 0
    assert detect_white_scribbles(img, min_area=1).sum() == 601
    grown = detect_white_scribbles(img, dilate=2)
    assert grown[0, 8, 20] == 1 and grown[0, 7, 20] == 0


# --------------------------------------------------------------------------------------------
# Mask files, checks, application
# --------------------------------------------------------------------------------------------

def _hole_pattern():
    m = np.zeros((20, 30), np.float32)
    m[4:12, 6:20] = 1
    return m


@pytest.mark.parametrize("variant", ["grey8", "grey16", "rgb8", "rgba8", "rgba_transparent", "mask_png"])
def test_read_mask_formats(tmp_path, variant):
    m = _hole_pattern()
    path = tmp_path / "m.png"
    if variant == "grey8":
        cv2.imwrite(str(path), (m * 255).astype(np.uint8))
    elif variant == "grey16":
        cv2.imwrite(str(path), (m * 65535).astype(np.uint16))
    elif variant == "rgb8":
        cv2.imwrite(str(path), np.repeat((m * 255).astype(np.uint8)[:, :, None], 3, 2))
    elif variant.startswith("rgba"):
        rgba = np.full((20, 30, 4), 255, np.uint8)
        if variant == "rgba8":
            rgba[:, :, :3] = (m * 255).astype(np.uint8)[:, :, None]
        else:  # white paint everywhere, opaque only on the hole
            rgba[:, :, 3] = (m * 255).astype(np.uint8)
        cv2.imwrite(str(path), rgba)
    else:
        write_mask(path, mask_to_tensor(m))
    mask = read_mask(path)
    assert mask.shape == (1, 20, 30) and mask.dtype == torch.float32
    np.testing.assert_array_equal(mask[0].numpy(), m)


def test_read_mask_nearest_resize_and_errors(tmp_path):
    path = tmp_path / "m.png"
    write_mask(path, _hole_pattern())
    big = read_mask(path, size=(40, 60))
    np.testing.assert_array_equal(big[0].numpy(), np.kron(_hole_pattern(), np.ones((2, 2))))
    grey = np.full((20, 30), 100, np.uint8)  # 100/255 < 0.5: all known
    cv2.imwrite(str(path), grey)
    assert read_mask(path).sum() == 0
    from datapipe.image_io import ImageReadError
    with pytest.raises(ImageReadError, match="missing.png"):
        read_mask(tmp_path / "missing.png")


def test_find_mask(tmp_path):
    write_mask(tmp_path / "face.png", _hole_pattern())
    assert find_mask(tmp_path / "in" / "face.jpg", tmp_path) == tmp_path / "face.png"
    with pytest.raises(MaskError, match="other.jpg"):
        find_mask("other.jpg", tmp_path)


def test_check_mask_errors():
    m = mask_to_tensor(_hole_pattern())
    assert check_mask(m, (3, 20, 30), "a.png") == pytest.approx(m.mean().item())
    with pytest.raises(MaskError, match="'empty.png'.*covers nothing"):
        check_mask(torch.zeros(1, 20, 30), (3, 20, 30), "empty.png")
    with pytest.raises(MaskError, match="'full.png'.*whole image"):
        check_mask(np.ones((20, 30), np.float32), (20, 30), "full.png")
    with pytest.raises(MaskError, match="'size.png'.*20x31"):
        check_mask(m, (3, 20, 31), "size.png")


def test_apply_mask():
    img = torch.rand(3, 20, 30, generator=torch.Generator().manual_seed(1)) + 0.1
    m = mask_to_tensor(_hole_pattern())
    out = apply_mask(img, m)
    assert torch.equal(out[:, m[0] == 1], torch.zeros(3, int(m.sum())))
    assert torch.equal(out[:, m[0] == 0], img[:, m[0] == 0])
    assert torch.equal(detect_black_holes(out), m)
    assert apply_mask(img[None], m[None]).shape == (1, 3, 20, 30)
    with pytest.raises(ValueError, match="does not fit"):
        apply_mask(img, m[:, :10])


# --------------------------------------------------------------------------------------------
# Test-set script
# --------------------------------------------------------------------------------------------

def _load_script():
    path = REPO / "scripts" / "make_inpainting_test_set.py"
    spec = importlib.util.spec_from_file_location("make_inpainting_test_set", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_inpainting_test_set_end_to_end(tmp_path):
    script = _load_script()
    hq_dir = tmp_path / "hq_in"
    rng = np.random.default_rng(3)
    for i in range(8):  # smooth 96x80 colour images: exercises crop + area resize
        small = rng.integers(20, 236, size=(6, 5, 3)).astype(np.uint8)
        write_image(hq_dir / f"{i:03d}.png", cv2.resize(small, (80, 96), interpolation=cv2.INTER_LINEAR))
    out = tmp_path / "out"
    args = ["--hq-dir", str(hq_dir), "--out-dir", str(out), "--size", "64", "--seed", "5"]
    assert script.main(args) == 0
    rows = list(csv.DictReader((out / "manifest.csv").read_text().splitlines()))
    assert [r["kind"] for r in rows] == ["box"] * 2 + ["irregular"] * 2 + ["expand"] * 2 + ["half"] * 2
    assert (out / "infos" / "half.txt").read_text().split() == ["006.png", "007.png"]
    for row in rows:
        lq, hq = read_image(out / "lq" / row["name"]), read_image(out / "hq" / row["name"])
        mask = read_mask(out / "mask" / row["name"])
        assert hq.shape == lq.shape == (3, 64, 64) and mask.shape == (1, 64, 64)
        assert float(row["hole_fraction"]) == pytest.approx(mask.mean().item(), abs=1e-6)
        assert torch.equal(detect_black_holes(lq), mask)  # lq is zero exactly in the holes
        assert torch.equal(lq, apply_mask(hq, mask))
    first = (out / "mask" / "002.png").read_bytes()
    with pytest.raises(SystemExit):  # non-empty output folder without --overwrite
        script.main(args)
    assert script.main(args + ["--overwrite"]) == 0
    assert (out / "mask" / "002.png").read_bytes() == first  # seeded: same masks again
