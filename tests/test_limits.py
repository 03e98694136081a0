"""Sizes users feed by accident: huge outputs refused from the header, non-square 'aligned' photos,
tiny photos. Each is an error for that file (named, with the reason), never a crash or a huge file."""
from pathlib import Path

import cv2
import numpy as np
import pytest

import difface
from difface import cli

pytestmark = pytest.mark.usefixtures("offline")
REPO = Path(__file__).resolve().parents[1]
FACE = REPO / "examples" / "faces" / "8_0_1_20170110215727788.png"


@pytest.fixture(scope="module")
def big_black(tmp_path_factory) -> Path:
    """A 6000x6000 black PNG: about 100 KB on disk, 36 megapixels decoded."""
    path = tmp_path_factory.mktemp("big") / "black.png"
    cv2.imwrite(str(path), np.zeros((6000, 6000, 3), np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    return path


def test_the_command_line_refuses_an_output_above_its_limit_before_decoding(big_black, tmp_path, capsys,
                                                                             monkeypatch):
    import difface.restorer
    monkeypatch.setattr(difface.restorer, "read_image", lambda *a, **k: pytest.fail("decoded"))
    out = tmp_path / "out"
    assert cli.main(["-i", str(big_black), "-o", str(out), "--cfg", "demo", "-s", "4", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "24000x24000 = 576.0 megapixels" in err and "upscale 1 gives 6000x6000" in err
    assert not list(out.glob("restored_image/*"))


def test_a_restorer_with_a_lower_output_limit_names_the_largest_upscale_that_fits(big_black):
    restorer = difface.Restorer("demo", device="cpu", max_output_pixels=40e6)
    with pytest.raises(difface.InputError, match=r"black.png: the restored photo would be 12000x12000 .* "
                                                 r"above the output limit of 40\.0 .*; upscale 1 gives 6000x6000"):
        restorer.restore(big_black, upscale=2)


def test_aligned_takes_square_crops_only(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    face = cv2.imread(str(FACE))
    cv2.imwrite(str(src / "group.png"), cv2.resize(face, (491, 310)))
    cv2.imwrite(str(src / "nearly.png"), cv2.resize(face, (100, 90)))  # 10:9 is still a crop
    assert cli.main(["-i", str(src), "-o", str(tmp_path / "out"), "--cfg", "demo", "--aligned"]) == 1
    err = capsys.readouterr().err
    assert "group.png: a face crop is square; this image is 491x310" in err
    assert (tmp_path / "out" / "nearly.png").is_file() and not (tmp_path / "out" / "group.png").exists()


def test_a_tiny_photo_is_refused_like_a_tiny_crop(tmp_path):
    restorer = difface.Restorer("demo", device="cpu")
    with pytest.raises(difface.InputError, match="image is 20x20, too small to hold a face"):
        restorer.restore(np.full((20, 20, 3), 128, np.uint8), name="tiny.png")


def test_min_face_size_is_in_pixels_of_the_photo_as_given():
    from datapipe.faces import FaceDetector
    from datapipe.image_io import read_image, tensor_to_uint8
    photo = tensor_to_uint8(read_image(REPO / "examples" / "photos" / "group_00.jpg"))
    enlarged = cv2.resize(photo, (photo.shape[1] * 2, photo.shape[0] * 2), interpolation=cv2.INTER_LINEAR)
    detector = FaceDetector("hog")
    found, _ = detector.detect_with_skipped(photo)
    sizes = sorted(f.size for f in found)
    assert len(sizes) >= 2
    limit = (sizes[0] + sizes[1]) / 2  # between the two smallest faces of the photo as given
    small = FaceDetector("hog", min_face_size=limit)
    kept, skipped = small.detect_with_skipped(photo)
    kept2, skipped2 = small.detect_with_skipped(enlarged, scale=2.0)
    assert len(skipped) == 1 and (len(kept2), len(skipped2)) == (len(kept), len(skipped))


def test_a_photo_whose_faces_are_all_too_small_says_so_plainly():
    from datapipe.faces import Face
    from datapipe.photos import PhotoResult
    face = Face(np.array([0, 0, 10, 10.0]), np.zeros((5, 2)), 1.0)
    line = PhotoResult(images=[], skipped=[face]).describe(64)
    assert "no face large enough to restore" in line and "no face found" not in line


def test_missing_inpainting_weights_do_not_suggest_the_demo(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    cv2.imwrite(str(src / "face.png"), np.zeros((64, 64, 3), np.uint8))
    assert cli.main(["-i", str(src), "-o", str(tmp_path / "out"), "--aligned", "--task", "inpainting",
                     "--no-download"]) == 2
    err = capsys.readouterr().err
    assert "lama_inpainting256" in err and "No bundled model inpaints" in err and "--cfg demo" not in err
