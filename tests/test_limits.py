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
