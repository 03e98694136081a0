"""A truncated image in a batch is reported as truncated, by name, and skipped; the rest is restored."""
import cv2
import numpy as np

from datapipe.image_io import write_image
from difface.cli import main


def test_a_truncated_file_in_a_batch_is_reported_and_skipped(tiny_cfg, tmp_path, capsys):
    src = tmp_path / "in"
    rng = np.random.default_rng(0)
    write_image(src / "good.png", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    claims = bytearray(cv2.imencode(".jpg", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))[1].tobytes())
    sof = claims.find(b"\xff\xc0")
    claims[sof + 5:sof + 9] = (6000).to_bytes(2, "big") * 2  # a 1 KB file whose header says 6000x6000
    (src / "claims.jpg").write_bytes(bytes(claims))
    out = tmp_path / "out"
    assert main([str(a) for a in ("-i", src, "-o", out, "--aligned", "--cfg", tiny_cfg)]) == 1
    err = capsys.readouterr().err
    assert "claims.jpg': truncated JPEG data: the header describes a 6000x6000 image" in err
    assert (out / "good.png").is_file() and not (out / "claims.jpg").exists()
