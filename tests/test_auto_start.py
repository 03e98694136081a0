"""`start_step: auto`: the rule, its settings in the config, and that a face restored at the N it
is given equals the fixed-N run with that N."""
import json
import math

import numpy as np
import pytest
import torch

import difface
from difface import cli
from difface.pipeline import ConfigError, load_config, sampling_of
from models.auto_start import (FEATURES, AutoStart, error_features, fit_weights, noise_to_signal, predicted_error,
                               probe_error, start_step)
from models.diffusion import DiffusionSchedule
from models.difface import DifFace

ABAR = DiffusionSchedule.from_name("cosine", 1000).alphas_cumprod
HEAD = ["sampling.auto.weights=[-4.0,0.0,0.0,0.0,0.0]"]  # predicts exp(-4) = 0.018 for every face


def test_the_rule_is_monotone_clipped_and_matches_the_noise_to_signal_ratio():
    auto = AutoStart(constant=2.0, min_step=20, max_step=600)
    errors = np.geomspace(1e-6, 10, 200)
    steps = [start_step(e, ABAR, auto) for e in errors]
    assert steps == sorted(steps) and steps[0] == 20 and steps[-1] == 600  # monotone, clipped at both ends
    for e, n in zip(errors, steps):
        if 20 < n < 600:  # the smallest step whose noise reaches c * E
            assert noise_to_signal(ABAR[n]) >= 2.0 * e > noise_to_signal(ABAR[n - 1])
    larger = [start_step(e, ABAR, AutoStart(constant=8.0, min_step=20, max_step=600)) for e in errors]
    assert all(b >= a for a, b in zip(steps, larger)) and larger != steps  # a larger constant, more noise


def test_the_head_is_a_log_linear_fit_of_the_features():
    g = torch.Generator().manual_seed(0)
    features = torch.cat([torch.ones(50, 1), torch.randn(50, 4, generator=g)], 1)
    weights = [-3.0, 0.5, -0.2, 0.1, 0.7]
    errors = predicted_error(features, weights)
    assert torch.allclose(errors, torch.exp(features @ torch.tensor(weights)))
    assert fit_weights(features, errors) == pytest.approx(weights, abs=1e-6)
    with pytest.raises(ValueError, match=f"needs {len(FEATURES)} numbers"):
        predicted_error(features, weights[:3])


def test_the_probe_of_a_face_does_not_depend_on_its_batch():
    def prior(x, t):  # a stand-in prior: its eps prediction depends on the image
        return torch.cat([torch.tanh(x) * 0.5, x], 1)
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(4, 3, 16, 16, generator=g)
    together = probe_error(prior, x0, float(ABAR[200]), 200, probes=2)
    alone = torch.cat([probe_error(prior, x0[i:i + 1], float(ABAR[200]), 200, probes=2) for i in range(4)])
    assert torch.equal(together, alone) and together.shape == (4,) and (together > 0).all()
    features = error_features(together, x0, x0.flip(-1))
    assert features.shape == (4, len(FEATURES)) and torch.equal(features[:, 0], torch.ones(4))


def test_auto_in_the_config(tiny_cfg, tmp_path):
    cfg = load_config(str(tiny_cfg), ["sampling.start_step=auto", "sampling.auto.constant=3.5", *HEAD])
    s = sampling_of(cfg)
    assert cfg.sampling.auto_start and s.auto_start and s.auto.constant == 3.5 and s.auto.weights[0] == -4.0
    cfg_file = tmp_path / "auto.yaml"
    cfg_file.write_text(f"base: {tiny_cfg}\nsampling:\n  start_step: auto\n  auto:\n    weights: [-4, 0, 0, 0, 0]\n")
    assert load_config(str(cfg_file)).sampling.auto_start
    fixed = load_config(str(cfg_file), ["sampling.start_step=200"])  # a fixed N given later wins
    assert not fixed.sampling.auto_start and fixed.sampling.start_step == 200
    with pytest.raises(ConfigError, match="needs a start-step head for 'tiny test model'"):
        load_config(str(tiny_cfg), ["sampling.start_step=auto"])
    with pytest.raises(ConfigError, match="'sampling.auto.constant'"):
        load_config(str(tiny_cfg), ["sampling.start_step=auto", "sampling.auto.constant=-1", *HEAD])
    with pytest.raises(ConfigError, match="'sampling.auto.min_step"):
        load_config(str(tiny_cfg), ["sampling.auto.min_step=500", "sampling.auto.max_step=100"])


def test_a_face_at_its_chosen_n_equals_the_fixed_n_run(tiny_cfg):
    face = (np.random.default_rng(3).random((32, 32, 3)) * 255).astype(np.uint8)
    r = difface.Restorer(str(tiny_cfg), device="cpu", overrides=HEAD)
    n = start_step(math.exp(-4.0), r.method.schedule.alphas_cumprod, AutoStart())
    assert 0 < n < 400
    auto = r.restore(face, aligned=True, start_step="auto", seed=5, name="f.png")
    fixed = r.restore(face, aligned=True, start_step=n, seed=5, name="f.png")
    assert auto.info["start_step"] == n and "start_step" not in fixed.info
    assert np.array_equal(auto.image, fixed.image)
    again = r.restore(face, aligned=True, start_step="auto", seed=5, name="f.png")
    assert np.array_equal(again.image, auto.image)  # deterministic for a seed


def test_faces_of_one_batch_at_different_n_equal_their_own_runs(tiny_cfg, monkeypatch):
    r = difface.Restorer(str(tiny_cfg), device="cpu", overrides=[*HEAD, "batch_size=4"])
    errors = torch.tensor([1e-4, 5e-2, 1e-2, 1e-4])  # the head's predictions, per face
    monkeypatch.setattr(DifFace, "predict_error", lambda self, x0_hat, y: errors[torch.arange(len(x0_hat)) % 4])
    rng = np.random.default_rng(4)
    faces = [(rng.random((32, 32, 3)) * 255).astype(np.uint8) for _ in range(4)]
    items = [r.prepare_aligned(f, f"face{i}.png") for i, f in enumerate(faces)]
    together = r.restore_aligned(items, r.sampling("auto"), seed=2, num_samples=2)
    steps = [res.info["start_step"] for res in together]
    assert steps == [start_step(float(e), r.method.schedule.alphas_cumprod, AutoStart()) for e in errors]
    assert len(set(steps)) == 3
    for res, item, n in zip(together, items, steps):
        alone = r.restore_aligned([item], r.sampling(n), seed=2, num_samples=2)[0]
        assert all(np.array_equal(a, b) for a, b in zip(res.samples, alone.samples))


def test_the_command_line_records_n_per_face(tiny_cfg, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    rng = np.random.default_rng(5)
    for i in range(2):
        from datapipe.image_io import write_image
        write_image(src / f"f{i}.png", (rng.random((32, 32, 3)) * 255).astype(np.uint8))
    assert cli.main(["-i", str(src), "-o", str(out), "--cfg", str(tiny_cfg), "--aligned", "--start-step", "auto",
                     "--device", "cpu", *HEAD]) == 0
    manifest = json.loads(next(out.glob("manifest_*.json")).read_text())
    abar = DiffusionSchedule.from_name(manifest["config"]["diffusion"]["schedule"], 1000).alphas_cumprod
    n = start_step(math.exp(-4.0), abar, AutoStart())
    assert [img["start_step"] for img in manifest["images"]] == [n, n]
    assert manifest["config"]["sampling"]["auto_start"] is True
