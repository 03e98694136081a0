"""Metrics: pinned against independent implementations and against known answers.

* PSNR / SSIM equal scikit-image's (Gaussian SSIM, sigma 1.5, population covariance).
* FID offline (fid-helper's weights in pytorch-fid's network) equals pytorch-fid's own run on the
  same files; those weights in pytorch-fid's network equal fid-helper's TorchScript TF port;
  FID(A, A) ~ 0 < FID(A, B).
* dlib identity / landmark distances rank the same face above a different one.
* Missing weights raise MetricUnavailable (never a number from a random network).
"""
import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from metrics import METRICS, MetricUnavailable, build_metric
from metrics.common import read_rgb_uint8
from metrics.pixel import psnr, rgb_to_y, ssim

FFHQ = "hq_aligned/ffhq_512"
LQ = "paired_synthetic/gpen_val_lq_256"
CELEBA = "hq_aligned/celebahq_256"


def _load(path, size):
    import cv2
    return cv2.resize(read_rgb_uint8(path), (size, size), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def faces(face_images):
    """HQ FFHQ 00000-00003 and the synthetic LQ of the first two, at 256x256, uint8 RGB."""
    hq = [_load(face_images / FFHQ / f"0000{i}.jpg", 256) for i in range(4)]
    lq = [_load(face_images / LQ / f"ffhq_0000{i}.png", 256) for i in range(2)]
    return hq, lq


# ------------------------------------------------------------------ PSNR / SSIM

def _sk_ssim(a, b, channel_axis):
    return structural_similarity(b, a, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                 data_range=255, channel_axis=channel_axis)


def _pairs(faces):
    hq, lq = faces
    rng = np.random.default_rng(0)
    noisy = np.clip(hq[1].astype(int) + rng.integers(-20, 21, hq[1].shape), 0, 255).astype(np.uint8)
    return [(lq[0][:128, :160], hq[0][:128, :160]), (noisy, hq[1])]


def test_psnr_ssim_rgb_equal_skimage(faces):
    for restored, gt in _pairs(faces):
        assert psnr(restored, gt) == pytest.approx(peak_signal_noise_ratio(gt, restored, data_range=255), abs=1e-10)
        assert ssim(restored, gt) == pytest.approx(_sk_ssim(restored, gt, 2), abs=1e-10)
        c = 4
        assert ssim(restored, gt, crop_border=c) == pytest.approx(
            _sk_ssim(restored[c:-c, c:-c], gt[c:-c, c:-c], 2), abs=1e-10)


def test_psnr_ssim_y_equal_skimage(faces):
    for restored, gt in _pairs(faces):
        yr, yg = rgb_to_y(restored), rgb_to_y(gt)
        assert psnr(restored, gt, y_channel=True) == pytest.approx(
            peak_signal_noise_ratio(yg, yr, data_range=255), abs=1e-10)
        assert ssim(restored, gt, y_channel=True) == pytest.approx(_sk_ssim(yr, yg, None), abs=1e-10)


def test_y_channel_is_matlab_rgb2ycbcr():
    img = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0]]], dtype=np.uint8)
    np.testing.assert_allclose(rgb_to_y(img)[0], [16.0, 235.0, 16 + 65.481], atol=1e-9)


def test_identical_and_invalid_inputs():
    a = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert psnr(a, a) == float("inf") and ssim(a, a) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="uint8"):
        psnr(a.astype(np.float32), a)
    with pytest.raises(ValueError, match="differ in size"):
        ssim(a[:16], a)


def test_registry_names_and_unknown_metric():
    assert {"psnr", "ssim", "psnr_y", "ssim_y", "lpips", "lpips_vgg", "fid", "id", "id_dlib", "lmd"} <= set(METRICS)
    with pytest.raises(ValueError, match="allowed: psnr, ssim"):
        build_metric("niqe")
    m = build_metric("ssim_y", crop_border=2)
    assert (m.name, m.kind, m.higher_is_better) == ("ssim_y", "pair", True) and m.weights


# ------------------------------------------------------------------ LPIPS

def test_lpips_without_backbone_raises_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    for name, file in (("lpips", "alexnet-owt-7be5be79.pth"), ("lpips_vgg", "vgg16-397923af.pth")):
        with pytest.raises(MetricUnavailable, match=file) as err:
            build_metric(name)
        assert str(tmp_path / "hub" / "checkpoints") in str(err.value)


def test_lpips_loads_backbone_from_hub_cache(tmp_path, monkeypatch):
    """A torchvision-layout AlexNet file in the hub cache is loaded into lpips' slices."""
    import torchvision
    torch.manual_seed(0)
    features = {k: v for k, v in torchvision.models.alexnet().state_dict().items() if k.startswith("features.")}
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(features, tmp_path / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    m = build_metric("lpips")
    state = m.model.net.state_dict()
    assert torch.equal(state["slice1.0.weight"], features["features.0.weight"])
    assert torch.equal(state["slice5.10.bias"], features["features.10.bias"])
    a = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    b = a.copy()
    b[:32] = 0
    assert m(a, a) == pytest.approx(0.0, abs=1e-7) and m(b, a) > 0.01
    assert "alexnet-owt-7be5be79.pth" in m.weights


# ------------------------------------------------------------------ FID

@pytest.fixture(scope="module")
def fid():
    return build_metric("fid", fid_backbone="fid_helper", fid_method="fast")


@pytest.fixture(scope="module")
def fid_features(face_images, fid):
    """pool3 features of 5 FFHQ and 5 CelebA-HQ faces at 128x128."""
    a = [_load(p, 128) for p in sorted((face_images / FFHQ).glob("*.jpg"))[:5]]
    b = [_load(p, 128) for p in sorted((face_images / CELEBA).glob("*.jpg"))[:5]]
    return a, fid.features(a), fid.features(b), b


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_offline_fid_statistics_equal_pytorch_fids_own_run_on_the_same_files(fid_features, tmp_path, monkeypatch):
    """The offline default (fid-helper's weights) gives pytorch-fid's statistics: its whole pipeline
    (PIL, ToTensor, InceptionV3, mean and covariance) run on the same PNG files, with those weights
    placed where pytorch-fid looks for its download. The distance is pytorch-fid's function."""
    import cv2
    from pytorch_fid.fid_score import compute_statistics_of_path
    from pytorch_fid.inception import InceptionV3
    from metrics.fid import PYTORCH_FID_FILE
    from metrics.inception import fid_helper_state
    folder = tmp_path / "a"
    folder.mkdir()
    for i, im in enumerate(fid_features[0]):
        cv2.imwrite(str(folder / f"{i}.png"), im[..., ::-1])
    default = build_metric("fid")  # offline: no pytorch-fid download in the hub cache
    assert default.features.source == "fid_helper"
    ours = default.reference(folder)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(fid_helper_state(), tmp_path / "torch" / "hub" / "checkpoints" / PYTORCH_FID_FILE)
    mu, sigma = compute_statistics_of_path(str(folder), InceptionV3([3]).eval(), 5, 2048, "cpu", 0)
    np.testing.assert_allclose(ours.mu, mu, rtol=0, atol=1e-5)
    np.testing.assert_allclose(ours.sigma, sigma, rtol=0, atol=1e-5)


def test_fid_self_near_zero_other_set_far(fid, fid_features, tmp_path):
    from metrics.fid import FidStats
    _, fa, fb, _ = fid_features
    sa, sb = FidStats.from_features(fa, fid.features.backbone), FidStats.from_features(fb, fid.features.backbone)
    assert abs(fid.distance(sa, sa)) < 1e-2
    cross = fid.distance(sa, sb)
    assert cross > 50
    sa.save(tmp_path / "a.npz")
    back = FidStats.load(tmp_path / "a.npz")
    assert back.n == 5 and back.backbone == "pytorch_fid"
    assert np.array_equal(back.mu, sa.mu) and np.array_equal(back.sigma, sa.sigma)
    with pytest.raises(ValueError, match="different backbones"):  # e.g. statistics of an older pipeline
        fid.distance(back, FidStats(sb.mu, sb.sigma, 5, "fid_helper"))


def test_frechet_distance_closed_form_and_methods():
    """Diagonal Gaussians: FID = |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2; sqrtm == fast."""
    from metrics.fid import FidStats, frechet_distance
    rng = np.random.default_rng(3)
    a, b = rng.uniform(0.1, 2, 16), rng.uniform(0.1, 2, 16)
    s1, s2 = FidStats(rng.normal(size=16), np.diag(a), 100), FidStats(rng.normal(size=16), np.diag(b), 100)
    expected = np.sum((s1.mu - s2.mu) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    for method in ("sqrtm", "fast"):
        assert frechet_distance(s1, s2, method=method) == pytest.approx(expected, rel=1e-9)
    x = rng.normal(size=(6, 32))  # singular covariances (6 samples, 32 dims): low-rank path of 'fast'
    s3, s4 = FidStats.from_features(x), FidStats.from_features(x + rng.normal(size=x.shape) * 0.3)
    assert frechet_distance(s3, s4) == pytest.approx(frechet_distance(s3, s4, method="fast"), rel=1e-4)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_fid_helper_weights_in_pytorch_fid_network_equal_the_tf_port(fid, tmp_path, monkeypatch):
    """fid-helper's TorchScript TF graph and pytorch-fid's InceptionV3 with the mapped weights agree."""
    from metrics import inception as inc
    from metrics.fid import PYTORCH_FID_FILE, InceptionFeatures
    ts = inc.load_torchscript(str(inc.fid_helper_model_path()))
    state = inc.fid_helper_state()
    net = inc.build_inception(state)
    x = torch.rand(1, 3, 299, 299, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(net(x)[0].flatten(1), ts(2 * x - 1), atol=1e-4, rtol=1e-4)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(MetricUnavailable, match=PYTORCH_FID_FILE):
        InceptionFeatures("pytorch_fid")
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "hub" / "checkpoints" / PYTORCH_FID_FILE)
    feats = InceptionFeatures("auto")  # prefers pytorch-fid weights when present
    assert feats.source == "pytorch_fid" and feats([np.zeros((299, 299, 3), np.uint8)]).shape == (1, 2048)


# ------------------------------------------------------------------ faces (dlib, ArcFace)

def test_id_dlib_same_person_closer_than_others(faces):
    hq, lq = faces
    m = build_metric("id_dlib")
    assert m.name == "id_dlib" and "dlib_face_recognition_resnet_model_v1.dat" in m.weights
    for i in range(2):
        same = m.measure(lq[i], hq[i])
        assert same.note == "box=detected"
        others = [m(hq[j], hq[i]) for j in range(4) if j != i]
        assert same.value < 0.45 and same.value < min(others), (same, others)


def test_lmd_dlib68_same_small_different_large(faces):
    hq, lq = faces
    m = build_metric("lmd")
    assert m.name == "lmd_dlib68"
    assert m(hq[0], hq[0]) == 0.0
    same, other = m(lq[0], hq[0]), m(hq[1], hq[0])
    assert same < 4.0 < other and same < other / 2, (same, other)
    blank = np.full((128, 128, 3), 127, np.uint8)
    assert m.measure(blank, blank).note == "box=full_image"


def test_arcface_needs_file_and_loads_module_prefixed_weights(faces, tmp_path):
    from metrics.arcface import ResNetArcFace
    with pytest.raises(MetricUnavailable, match="resnet18_110.pth"):
        build_metric("id")
    torch.manual_seed(0)
    net = ResNetArcFace()
    assert sum(p.numel() for p in net.parameters()) > 10_000_000
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, tmp_path / "resnet18_110.pth")
    m = build_metric("id", arcface_path=tmp_path / "resnet18_110.pth")
    hq, lq = faces
    same = m.measure(hq[0], hq[0])
    assert np.isnan(same.value) and "identical" in same.note
    assert 0 < m(hq[1], hq[0]) <= 180
