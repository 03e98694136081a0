"""Shared test helpers; the files the tests read live in tests/fixtures/ (official reference
outputs in official/, real face photos in faces/: see the README.md and SOURCES.md there)."""
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
# DIFFACE_FIXTURES points the parity tests at another reference set, for example one rebuilt with
# scripts/make_official_fixtures.py
FIXTURES = Path(os.environ.get("DIFFACE_FIXTURES", REPO / "tests" / "fixtures" / "official"))
FACE_IMAGES = REPO / "tests" / "fixtures" / "faces"

# Reference outputs were produced on CPU in float32; keep matmuls exact and results repeatable.
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """Downloads go to a closed local port and the weights folder is a temporary one, so a test
    of the command line reaches neither the internet nor the user's cache (modules switch it on
    with `pytestmark = pytest.mark.usefixtures("offline")`; tests that serve weights point
    DIFFACE_WEIGHTS_URL_BASE at their own local server)."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DIFFACE_WEIGHTS_URL_BASE", "http://127.0.0.1:9")
    monkeypatch.setenv("DIFFACE_WEIGHTS", str(tmp_path / "weights-cache"))


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for training tests: on 2 shared cores, two spinning OpenMP threads
    per process run several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _folder(path: Path) -> Path:
    """The folder, or an error (never a skip): the repository carries every file its tests read."""
    if not path.is_dir():
        raise FileNotFoundError(f"test fixture folder not found: {path}")
    return path


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """Reference outputs of the official implementation (tests/fixtures/official/README.md)."""
    return _folder(FIXTURES)


@pytest.fixture(scope="session")
def face_images() -> Path:
    """Real face photos, laid out as tests/fixtures/faces/SOURCES.md lists them."""
    return _folder(FACE_IMAGES)


TINY_SWINIR = dict(img_size=8, patch_size=1, in_chans=3, embed_dim=12, depths=[1], num_heads=[2], window_size=4,
                   mlp_ratio=2, sf=4, img_range=1.0, upsampler="nearest+conv", resi_connection="1conv",
                   unshuffle=True, unshuffle_scale=4)
TINY_UNET = dict(image_size=32, in_channels=3, model_channels=32, out_channels=6, num_res_blocks=1,
                 attention_resolutions=[16], channel_mult=[1, 1], num_head_channels=32,
                 use_scale_shift_norm=True)


@pytest.fixture(scope="session")
def tiny_cfg(tmp_path_factory) -> Path:
    """A user YAML for 32x32 faces with random weights: SwinIR as {'params_ema'}, UNet with module. prefixes."""
    root = tmp_path_factory.mktemp("tiny_model")
    torch.manual_seed(0)
    from models import build_network

    swinir = build_network("swinir", TINY_SWINIR)
    unet = build_network("unet", TINY_UNET)
    for p in unet.parameters():  # the zero-initialised layers would make the prior a no-op
        torch.nn.init.normal_(p, std=0.02)
    torch.save({"params_ema": swinir.state_dict()}, root / "est.pth")
    torch.save({f"module.{k}": v for k, v in unet.state_dict().items()}, root / "prior.pth")
    cfg = {"name": "tiny test model", "image_size": 32,
           "estimator": {"name": "swinir", "params": TINY_SWINIR, "weights": str(root / "est.pth")},
           "prior": {"name": "unet", "params": TINY_UNET, "weights": str(root / "prior.pth")},
           "sampling": {"start_step": 400, "steps": 3}}
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    """Eight smooth random 40x48 'faces' for training tests (resized and cropped to 32x32 by the
    datasets); test modules with other needs define their own `faces`."""
    folder = tmp_path_factory.mktemp("faces")
    rng = np.random.default_rng(0)
    for i in range(8):
        img = cv2.GaussianBlur((rng.random((40, 48, 3)) * 255).astype(np.uint8), (9, 9), 3)
        cv2.imwrite(str(folder / f"{i:03d}.png"), img)
    return folder


@pytest.fixture
def registry_cfg(tiny_cfg, tmp_path) -> tuple[Path, Path]:
    """(config, folder): the tiny networks under the paper's registry names, and a folder holding
    their files as a weights server would serve them (see `serve_weights`)."""
    served = tmp_path / "served"
    served.mkdir()
    tiny = yaml.safe_load(tiny_cfg.read_text())
    (served / "swinir_restoration512_L1.pth").write_bytes(Path(tiny["estimator"]["weights"]).read_bytes())
    (served / "iddpm_ffhq512_ema500000.pth").write_bytes(Path(tiny["prior"]["weights"]).read_bytes())
    tiny["estimator"]["weights"], tiny["prior"]["weights"] = "swinir_restoration512_L1", "iddpm_ffhq512_ema500000"
    cfg = tmp_path / "registry.yaml"
    cfg.write_text(yaml.safe_dump(tiny))
    return cfg, served


@pytest.fixture
def serve_weights(monkeypatch):
    """`with serve_weights(folder):` downloads come from an HTTP server on 127.0.0.1 for the block."""
    import contextlib
    import functools
    import http.server
    import threading

    from tests.test_checkpoint import QuietHandler

    @contextlib.contextmanager
    def serve(folder: Path):
        handler = functools.partial(QuietHandler, directory=str(folder))
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        try:
            monkeypatch.setenv("DIFFACE_WEIGHTS_URL_BASE", f"http://127.0.0.1:{httpd.server_address[1]}")
            for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
                monkeypatch.delenv(var, raising=False)
            yield
        finally:
            httpd.shutdown()

    return serve
