"""datapipe.faces and datapipe.face_align: face counts on real photos, landmark convention, alignment,
paste-back."""
import importlib.util

import cv2
import numpy as np
import pytest

from datapipe.face_align import (
    BORDER_VALUE_RGB, FFHQ_TEMPLATE_512, align_face, estimate_similarity, inverse_affine, paste_affine,
    paste_faces, transform_points,
)
from datapipe.faces import FaceDetector, landmarks5_from_68
from datapipe.photos import enlarge_to_min_side, upscale_lanczos

# Faces a person sees in each photo, counted by eye on enlarged views of every image:
# - 00.jpg: four people standing; a tiny dark head behind the first man shows no face.
# - 03.jpg: one woman facing the camera; the person on the right edge is a hair/cheek profile.
# - Solvay_conference_1927.png: 29 participants (11 back, 9 middle, 9 front row), all visible.
EXPECTED_FACES = {
    "codeformer_whole_imgs/00.jpg": 4,
    "codeformer_whole_imgs/01.jpg": 4,
    "codeformer_whole_imgs/03.jpg": 1,
    "codeformer_whole_imgs/04.jpg": 1,
    "codeformer_whole_imgs/05.jpg": 1,
    "dfdnet_testwhole/test1.jpg": 1,
    "dfdnet_testwhole/test2.jpg": 1,
    "dfdnet_testwhole/test3.jpg": 1,
    "dfdnet_testwhole/test4.jpg": 1,
    "dfdnet_testwhole/test5.jpg": 1,
    "dfdnet_testwhole/test6.png": 1,
    "difface_testdata/Solvay_conference_1927.png": 29,  # RGBA file
}


def _read_rgb(path) -> np.ndarray:
    """File -> HxWx3 uint8 RGB (alpha dropped), standing in for datapipe.image_io here."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None, path
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector()  # hog, the default


@pytest.fixture(scope="module")
def whole(face_images):
    return face_images / "lq_whole"


@pytest.mark.parametrize("name", sorted(EXPECTED_FACES))
def test_counts_on_real_photos(detector, whole, name):
    faces = detector.detect(_read_rgb(whole / name))
    # at least what a person sees; at most one stray detection (none with these defaults)
    assert EXPECTED_FACES[name] <= len(faces) <= EXPECTED_FACES[name] + 1
    for f in faces:
        assert f.box.shape == (4,) and f.landmarks5.shape == (5, 2)
        assert f.landmarks5.dtype == np.float32
        left_eye, right_eye, nose, mouth_l, mouth_r = f.landmarks5
        assert left_eye[0] < right_eye[0] and mouth_l[0] < mouth_r[0]  # image-left first
        assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_l[1], mouth_r[1])


def test_five_points_sit_on_the_ffhq_template(detector, face_images):
    """dlib 68 -> 5 points on FFHQ-aligned 512 px images land on the FFHQ-512 template."""
    paths = sorted((face_images / "hq_aligned" / "ffhq_512").glob("*.jpg"))
    assert len(paths) == 6
    pts = []
    for p in paths:
        img = _read_rgb(p)
        assert img.shape == (512, 512, 3)
        pts.append(detector.detect(img)[0].landmarks5)
    mean_err = np.linalg.norm(np.mean(pts, axis=0) - FFHQ_TEMPLATE_512, axis=1)
    assert mean_err.max() < 8, mean_err  # measured: eyes ~3 px, nose/mouth <= 6 px


def test_landmarks5_from_68_indices():
    pts = np.zeros((68, 2))
    five = [[10, 20], [30, 20], [20, 30], [12, 40], [28, 40]]
    pts[36:42], pts[42:48], pts[30], pts[48], pts[54] = five
    np.testing.assert_allclose(landmarks5_from_68(pts), five)


@pytest.mark.parametrize("name", ["dfdnet_testwhole/test6.png", "dfdnet_testwhole/test4.jpg"])
def test_aligned_crop_redetects_at_template(detector, whole, name):
    img = _read_rgb(whole / name)
    face = detector.detect(img)[0]
    crop, affine = align_face(img, face.landmarks5)
    assert crop.shape == (512, 512, 3) and crop.dtype == np.uint8 and affine.shape == (2, 3)
    again = detector.detect(crop)
    assert len(again) == 1
    mapped = transform_points(face.landmarks5, affine)
    assert np.abs(again[0].landmarks5 - mapped).max() < 4  # detector agrees with the warp
    # what is left is the face's own shape (a wide smile moves the mouth corners by up to ~17 px):
    # measured all <= 4 px on test6.png, <= 6 px on test4.jpg
    dist = np.linalg.norm(again[0].landmarks5 - FFHQ_TEMPLATE_512, axis=1)
    assert dist[:2].max() < 10 and dist.max() < 20 and dist.mean() < 12, dist


def test_similarity_fit_and_round_trip():
    rng = np.random.default_rng(0)
    angle, scale, shift = 0.3, 2.5, np.array([40.0, -7.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    src = rng.uniform(0, 100, (5, 2))
    dst = src @ rot.T + shift
    for method in ("lstsq", "lmeds"):
        affine = estimate_similarity(src, dst, method)
        np.testing.assert_allclose(affine, np.hstack([rot, shift[:, None]]), atol=1e-3)
        back = transform_points(transform_points(src, affine), inverse_affine(affine))
        assert np.abs(back - src).max() < 1e-3
    with pytest.raises(ValueError, match="lstsq"):
        estimate_similarity(src, dst, "ransac")


def test_lmeds_and_lstsq_agree_on_real_landmarks(detector, whole):
    face = detector.detect(_read_rgb(whole / "dfdnet_testwhole/test5.jpg"))[0]
    # the template as seen in the photo, under each fit
    seen = [transform_points(FFHQ_TEMPLATE_512, inverse_affine(
        estimate_similarity(face.landmarks5, FFHQ_TEMPLATE_512, m))) for m in ("lstsq", "lmeds")]
    # same crop within 5 % of the face (measured: 0.9 % on this photo)
    assert np.abs(seen[0] - seen[1]).max() < 0.05 * face.size


def test_template_and_face_size_scaling():
    img = np.full((100, 100, 3), 200, np.uint8)
    lm = FFHQ_TEMPLATE_512 / 4 + 5  # a face already at the template, 128-px scale, shifted
    crop, affine = align_face(img, lm, face_size=256)
    np.testing.assert_allclose(transform_points(lm, affine), FFHQ_TEMPLATE_512 / 2, atol=1e-2)
    assert tuple(crop[0, 0]) == (200, 200, 200) and tuple(crop[-1, -1]) == BORDER_VALUE_RGB


def _consistent_crop(canvas, affine, upscale, offset):
    """The crop ``paste_faces`` will warp back, sampled from the upscaled canvas itself."""
    to_crop = inverse_affine(paste_affine(affine, upscale, offset))
    return cv2.warpAffine(canvas, to_crop, (512, 512), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


def test_paste_back_of_unchanged_crop(detector, whole):
    img = _read_rgb(whole / "dfdnet_testwhole/test6.png")
    affine = align_face(img, detector.detect(img)[0].landmarks5)[1]
    canvas = cv2.GaussianBlur(upscale_lanczos(img, 2), (0, 0), 2)  # smooth: resampling is exact-ish
    assert canvas.shape == (408, 400, 3)
    for offset in (None, 0.5):  # official (+1.0 px) and pixel-centre exact ((2-1)/2)
        crop = _consistent_crop(canvas, affine, 2, offset)
        out = paste_faces(canvas, [(crop, affine)], 2, offset=offset)
        assert np.abs(out.astype(int) - canvas).max() <= 2  # measured 2, mean 0.04
    mixed = paste_faces(canvas, [(_consistent_crop(canvas, affine, 2, 0.5), affine)], 2)
    assert np.abs(mixed.astype(int) - canvas).max() > 10  # a half-pixel slip shows: test is sharp


def test_pixel_centre_offset_fits_a_lanczos_background(detector, whole):
    """Crop from the input, paste on its Lanczos x2: (s-1)/2 lands best, the official 0.5*s not."""
    img = cv2.GaussianBlur(_read_rgb(whole / "dfdnet_testwhole/test6.png"), (0, 0), 1.5)
    crop, affine = align_face(img, detector.detect(img)[0].landmarks5)
    canvas = upscale_lanczos(img, 2)
    err = {o: np.abs(paste_faces(canvas, [(crop, affine)], 2, offset=o).astype(int) - canvas)
           .mean() for o in (0.0, 0.5, 1.0)}
    assert err[0.5] < 0.6 * min(err[0.0], err[1.0]), err  # measured 0.17 vs 0.63 / 0.70


def _paste_full_canvas(canvas, faces, upscale):
    """facexlib's paste_faces_to_input_image without parsing, written over the whole canvas."""
    out = canvas.astype(np.float32)
    h, w = out.shape[:2]
    for crop, affine in faces:
        inv = inverse_affine(affine) * upscale
        inv[:, 2] += 0.5 * upscale
        face = cv2.warpAffine(crop, inv, (w, h)).astype(np.float32)
        mask = cv2.warpAffine(np.ones(crop.shape[:2], np.float32), inv, (w, h))
        mask = cv2.erode(mask, np.ones((2 * upscale, 2 * upscale), np.uint8))
        w_edge = int(mask.sum() ** 0.5) // 20
        centre = cv2.erode(mask, np.ones((2 * w_edge, 2 * w_edge), np.uint8))
        soft = cv2.GaussianBlur(centre, (2 * w_edge + 1, 2 * w_edge + 1), 0)[..., None]
        out = soft * (mask[..., None] * face) + (1 - soft) * out
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def test_paste_region_of_interest_equals_whole_canvas():
    rng = np.random.default_rng(1)
    canvas = rng.integers(0, 256, (300, 260, 3), dtype=np.uint8)
    faces = []
    for lm_shift, ang in [((-60, -40), 0.2), ((10, 20), -0.1), ((90, 110), 0.5)]:  # edges + inside
        lm = FFHQ_TEMPLATE_512 / 6 + lm_shift
        c, s = np.cos(ang), np.sin(ang)
        lm = (lm - lm.mean(0)) @ np.array([[c, -s], [s, c]]).T + lm.mean(0)
        crop = rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)
        faces.append((crop, estimate_similarity(lm, FFHQ_TEMPLATE_512, "lstsq")))
    ours = paste_faces(canvas, faces, 2)
    ref = _paste_full_canvas(canvas, faces, 2)
    assert np.abs(ours.astype(int) - ref).max() <= 1


def test_paste_of_a_magnified_small_crop_fades_out_without_an_edge():
    """A 64 px crop pasted about 5x larger (a small model's output on a large aligned crop): the
    blend must fall smoothly to the canvas on every side (a fixed 4 px region margin left a
    hard step of about 12% at the right and bottom edges)."""
    canvas = np.full((512, 512, 3), 255, np.uint8)
    affine = np.array([[0.1944, -0.0008, -18.22], [0.0008, 0.1944, -28.03]])  # the demo's reframing
    out = paste_faces(canvas, [(np.zeros((64, 64, 3), np.uint8), affine)], 1, offset=0.0)[..., 0].astype(int)
    assert out[250, 250] == 0 and out[250, 500] == 255 and out[500, 250] == 255
    steps = max(np.abs(np.diff(out, axis=0)).max(), np.abs(np.diff(out, axis=1)).max())
    assert steps <= 0.1 * 255, steps


def test_draw_box_and_empty_paste():
    canvas = np.full((200, 200, 3), 128, np.uint8)
    affine = estimate_similarity(FFHQ_TEMPLATE_512 / 8 + 10, FFHQ_TEMPLATE_512, "lstsq")
    crop = np.full((512, 512, 3), 128, np.uint8)
    assert np.array_equal(paste_faces(canvas, [], 2), canvas)
    plain = paste_faces(canvas, [(crop, affine)], 2)
    assert np.abs(plain.astype(int) - canvas).max() <= 1
    boxed = paste_faces(canvas, [(crop, affine)], 2, draw_box=True)
    green = (boxed[..., 1] > 250) & (boxed[..., 0] < 5) & (boxed[..., 2] < 5)
    assert 100 < green.sum() < 5000 and green[canvas.shape[0] // 2, canvas.shape[1] // 2] == 0


def test_no_face_and_degenerate_images(detector):
    y, x = np.mgrid[0:240, 0:320]
    sky_and_hills = np.stack([x * 0.5, 120 + 60 * np.sin(x / 40.0) * (y > 150), 255 - y * 0.6], -1)
    assert detector.detect(sky_and_hills.astype(np.uint8)) == []
    assert detector.detect(np.zeros((1, 1, 3), np.uint8)) == []
    tiny = FaceDetector(work_min_side=None, upsample=0)
    assert tiny.detect(np.zeros((1, 1, 3), np.uint8)) == []
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        detector.detect(np.zeros((20, 20, 4), np.uint8))


def test_rgba_and_grey_photos_after_conversion(detector, whole):
    rgba = cv2.imread(str(whole / "difface_testdata/Solvay_conference_1927.png"), cv2.IMREAD_UNCHANGED)
    assert rgba.shape[2] == 4
    with pytest.raises(ValueError, match="image_io"):
        detector.detect(rgba)
    assert len(detector.detect(cv2.cvtColor(rgba, cv2.COLOR_BGRA2RGB))) >= 29
    grey = cv2.cvtColor(_read_rgb(whole / "dfdnet_testwhole/test4.jpg"), cv2.COLOR_RGB2GRAY)
    assert len(detector.detect(cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB))) == 1


def test_small_faces_are_skipped_and_reported(whole):
    det = FaceDetector(min_face_size=50)
    kept, skipped = det.detect_with_skipped(_read_rgb(whole / "codeformer_whole_imgs/01.jpg"))
    assert len(kept) + len(skipped) == 4 and len(skipped) >= 1  # boxes 45-55 px
    assert all(f.size >= 50 for f in kept)
    assert all(f.size < 50 or f.eye_distance < 12.5 for f in skipped)


def test_cnn_detector(whole):
    det = FaceDetector("cnn", upsample=0, work_min_side=None)  # ~1 s on a 200-px photo
    faces = det.detect(_read_rgb(whole / "dfdnet_testwhole/test6.png"))
    assert len(faces) == 1 and faces[0].landmarks68.shape == (68, 2)


def test_detector_choice_errors():
    with pytest.raises(ValueError, match="allowed"):
        FaceDetector("yolo")
    if importlib.util.find_spec("facexlib") is None:
        with pytest.raises(ImportError, match="facexlib"):
            FaceDetector("retinaface")


def test_resize_helpers():
    img = np.zeros((100, 300, 3), np.uint8)
    big, f = enlarge_to_min_side(img, 512)
    assert big.shape == (512, 1536, 3) and f == pytest.approx(5.12)
    same, f = enlarge_to_min_side(np.zeros((600, 512, 3), np.uint8), 512)
    assert same.shape == (600, 512, 3) and f == 1.0
    assert upscale_lanczos(np.zeros((7, 5, 3), np.uint8), 2).shape == (14, 10, 3)
    np.testing.assert_allclose(paste_affine(np.eye(2, 3), 2), [[2, 0, 1], [0, 2, 1]])
