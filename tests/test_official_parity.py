"""Parity with the reference outputs of the official DifFace implementation.

Generic over the fixture folder (``DIFFACE_FIXTURES``): networks are built from the ``*.json``
configs found there, respacings, start indices, timesteps and eta are read from the files, and
every fixture file is checked at the tolerances of the folder's README. Nothing about one
particular fixture set is written here.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models import NETWORKS, build_network
from models.checkpoint import load_weights
from models.diffusion import DiffusionSchedule, space_timesteps
from models.difface import DifFace, SamplingConfig, resize
from models.samplers import ddim_sample_loop, ddim_step, ddpm_step

NET_ATOL, STEP_ATOL, CHAIN_ATOL, SCHEDULE_ATOL = 2e-5, 1e-4, 1e-3, 1e-12


def _load(path: Path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _kind(name: str) -> str:
    kind = name.split("_")[0]
    assert kind in NETWORKS, f"fixture {name} names an unknown network kind {kind!r}"
    return kind


def _network(fixtures: Path, stem: str) -> torch.nn.Module:
    params = json.loads((fixtures / f"{stem}.json").read_text())
    net = build_network(_kind(stem), params)
    load_weights(net, fixtures / f"{stem}.pth", strict=True)
    return net.eval()


def _small_networks(fixtures: Path) -> list[str]:
    return sorted(p.stem for p in fixtures.glob("*.json") if p.stem != "full_configs")


def _schedule(fixtures: Path) -> DiffusionSchedule:
    settings = _load(fixtures / "diffusion.pt")["settings"]
    return DiffusionSchedule.from_name(settings["noise_schedule"], int(settings["steps"]))


def _close(actual: torch.Tensor, expected: torch.Tensor, atol: float, what: str) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    err = (actual.double() - expected.double()).abs().max().item()
    assert err <= atol, f"{what}: max |error| {err:.3g} > {atol:g}"


# ---- networks -------------------------------------------------------------------------------

def test_every_fixture_network_reproduces_its_outputs(fixtures_dir):
    stems = _small_networks(fixtures_dir)
    assert stems, "no network config (*.json) in the fixture folder"
    for stem in stems:
        net = _network(fixtures_dir, stem)
        io = _load(fixtures_dir / f"{stem}_io.pt")
        inputs = [k for k in io if k.startswith("x")]
        assert inputs, f"{stem}_io.pt has no input tensors"
        for key in inputs:
            args = (io[key],) + ((io["t"],) if "t" in io else ())
            with torch.no_grad():
                out = net(*args)
            _close(out, io["out" + key[1:]], NET_ATOL, f"{stem}: {key}")


def _key_file(path: Path) -> list[tuple[str, tuple[int, ...], str]]:
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            name, shape, dtype = line.split("\t")
            rows.append((name, tuple(json.loads(shape.replace("(", "[").replace(")", "]").replace(",]", "]"))), dtype))
    return rows


def test_full_size_networks_have_the_official_keys(fixtures_dir):
    configs = json.loads((fixtures_dir / "full_configs.json").read_text())
    for name, params in configs.items():
        with torch.device("meta"):
            net = build_network(_kind(name), params)
        ours = [(k, tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in net.state_dict().items()]
        official = _key_file(fixtures_dir / f"keys_{name}.txt")
        assert sorted(ours) == sorted(official), f"{name}: state_dict differs from keys_{name}.txt"
        n_params = sum(p.numel() for p in net.parameters())
        n_expected = sum(int(np.prod(s)) for k, s, _ in official
                         if not k.endswith(("running_mean", "running_var", "num_batches_tracked",
                                            "relative_position_index", "attn_mask")))
        assert n_params == n_expected, f"{name}: {n_params} parameters, official {n_expected}"


# ---- diffusion ------------------------------------------------------------------------------

def test_schedules_and_respacings(fixtures_dir):
    ref = _load(fixtures_dir / "diffusion.pt")
    base = _schedule(fixtures_dir)
    _close(torch.from_numpy(base.betas), ref["betas"], SCHEDULE_ATOL, "betas")
    _close(torch.from_numpy(base.alphas_cumprod), ref["alphas_cumprod"], SCHEDULE_ATOL, "alphas_cumprod")
    assert ref["respacings"], "no respacing in diffusion.pt"
    for spec, expected in ref["respacings"].items():
        steps = space_timesteps(base.num_steps, spec)
        assert steps == list(expected["timestep_map"]), f"respacing {spec!r}: timestep map differs"
        respaced = base.respace(steps)
        for key, value in expected.items():
            if key != "timestep_map":
                _close(torch.from_numpy(getattr(respaced, key)), value, SCHEDULE_ATOL, f"{spec}: {key}")


def _respaced(fixtures_dir, ref) -> tuple[DiffusionSchedule, list[int]]:
    base = _schedule(fixtures_dir)
    steps = space_timesteps(base.num_steps, ref["respacing"])
    return base, steps


def test_ddim_trajectory(fixtures_dir):
    ref = _load(fixtures_dir / "ddim_trajectory.pt")
    base, grid = _respaced(fixtures_dir, ref)
    timesteps = [grid[i] for i in ref["respaced_indices"]]
    assert timesteps == ref["timesteps"].tolist(), "the official chain starts one grid point below N"
    unet = _network(fixtures_dir, next(s for s in _small_networks(fixtures_dir) if _kind(s) == "unet"))
    xs, x0s = [], []
    with torch.no_grad():
        final = ddim_sample_loop(unet, ref["x_start"], timesteps, base, eta=float(ref["eta"]),
                                 generator=torch.Generator().manual_seed(0),
                                 callback=lambda k, x, x0: (xs.append(x), x0s.append(x0)))
    _close(torch.stack(xs), ref["xs"], CHAIN_ATOL, "xs")
    _close(torch.stack(x0s), ref["pred_xstarts"], CHAIN_ATOL, "pred_xstarts")
    _close(final, ref["final"], CHAIN_ATOL, "final")


def _unet_for_steps(fixtures_dir):
    return _network(fixtures_dir, next(s for s in _small_networks(fixtures_dir) if _kind(s) == "unet"))


def test_single_ddim_step(fixtures_dir):
    ref = _load(fixtures_dir / "ddim_step_eta.pt")
    base, grid = _respaced(fixtures_dir, ref)
    t, t_prev = grid[ref["index"]], grid[ref["index"] - 1] if ref["index"] > 0 else None
    assert (t, t_prev) == (ref["t_base"], ref["t_prev_base"])
    ab, ab_prev = base.alpha_bar(t), base.alpha_bar(t_prev)
    assert abs(ab - ref["alpha_bar"]) < SCHEDULE_ATOL and abs(ab_prev - ref["alpha_bar_prev"]) < SCHEDULE_ATOL
    with torch.no_grad():
        out = _unet_for_steps(fixtures_dir)(ref["x_t"], torch.tensor([t] * ref["x_t"].shape[0]))
    _close(out, ref["model_out"], NET_ATOL, "model_out")
    channels = ref["x_t"].shape[1]
    x_prev, x0 = ddim_step(ref["x_t"], ref["model_out"][:, :channels], ab, ab_prev, float(ref["eta"]), ref["noise"])
    _close(x0, ref["pred_xstart"], STEP_ATOL, "pred_xstart")
    _close(x_prev, ref["x_prev"], STEP_ATOL, "x_prev")


def test_single_ddpm_step(fixtures_dir):
    ref = _load(fixtures_dir / "ddpm_step.pt")
    base, grid = _respaced(fixtures_dir, ref)
    index = ref["index"]
    assert grid[index] == ref["t_base"] and grid[index - 1] == ref["t_prev_base"]
    with torch.no_grad():
        out = _unet_for_steps(fixtures_dir)(ref["x_t"], torch.tensor([grid[index]] * ref["x_t"].shape[0]))
    _close(out, ref["model_out"], NET_ATOL, "model_out")
    channels = ref["x_t"].shape[1]
    eps, v = ref["model_out"][:, :channels], ref["model_out"][:, channels:]
    x_prev, x0, mean, log_var = ddpm_step(ref["x_t"], eps, v, base.respace(grid), index, ref["noise"])
    for name, value in [("pred_xstart", x0), ("mean", mean), ("log_variance", log_var), ("x_prev", x_prev)]:
        _close(value, ref[name], STEP_ATOL, name)


# ---- end to end -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["difface_restore.pt", "difface_restore_resized.pt"])
def test_end_to_end_restoration(fixtures_dir, name):
    ref = _load(fixtures_dir / name)
    base, grid = _respaced(fixtures_dir, ref)
    start_step = grid[ref["start_index"]]
    assert start_step == ref["q_sample_t_base"]
    assert abs(base.alpha_bar(start_step) - ref["alpha_bar_start"]) < SCHEDULE_ATOL
    stems = _small_networks(fixtures_dir)
    estimator = _network(fixtures_dir, next(s for s in stems if _kind(s) == "swinir"))
    unet = _network(fixtures_dir, next(s for s in stems if _kind(s) == "unet"))
    method = DifFace(estimator, unet, base, int(ref["im_size"]),
                     SamplingConfig(start_step=start_step, grid=ref["respacing"], eta=float(ref["eta"])))
    assert method.timesteps == ref["timesteps"].tolist()

    size = (int(ref["im_size"]),) * 2
    _close(resize(ref["y0"], size), ref["estimator_input"], NET_ATOL, "estimator_input")
    _close(method.estimate(ref["estimator_input"]), ref["f_y0"], NET_ATOL, "f_y0")
    step_noises = ref.get("step_noises")
    noise_fn = (lambda k, like: step_noises[k]) if step_noises is not None else None
    starts = []
    method_prior = method.prior
    method.prior = lambda x, t: (starts.append(x.clone()) if not starts else None, method_prior(x, t))[1]
    result = method.restore(ref["y0"], generator=torch.Generator().manual_seed(0),
                            start_noise=ref["q_noise"], noise_fn=noise_fn)
    _close(starts[0], ref["x_start"], NET_ATOL, "x_start")
    _close(result.sample, ref["final"], CHAIN_ATOL, "final")


# ---- degradations ---------------------------------------------------------------------------

def test_kernels_and_test_degradation(fixtures_dir):
    from datapipe.degradations import bivariate_gaussian_kernel, face_test_degradation, isotropic_gaussian_kernel

    ref = _load(fixtures_dir / "degradation.pt")
    size = int(ref["kernel_size"])
    aniso = bivariate_gaussian_kernel(size, ref["kernel_aniso_sig_x"], ref["kernel_aniso_sig_y"],
                                      ref["kernel_aniso_theta"])
    _close(torch.from_numpy(aniso), ref["kernel_aniso"], SCHEDULE_ATOL, "kernel_aniso")
    _close(torch.from_numpy(isotropic_gaussian_kernel(size, ref["kernel_iso_sigma"])), ref["kernel_iso"],
           SCHEDULE_ATOL, "kernel_iso")
    hq = ref["hq"].numpy().astype(np.float32) / 255.0  # BGR, as the official script reads it
    rng = np.random.default_rng(0) if ref["nf"] > 0 else None
    out = face_test_degradation(hq, ref["sf"], ref["sig_x"], ref["sig_y"], ref["theta"], ref["nf"], ref["qf"],
                                rng=rng, bgr=True, kernel_size=size)
    _close(torch.from_numpy(out["blur_kernel"]), ref["blur_kernel"], SCHEDULE_ATOL, "blur_kernel")
    _close(torch.from_numpy(out["lq_down"]), ref["lq_down"], 1e-6, "lq_down")
    if ref["nf"] == 0:  # with noise, the draws of the official RNG cannot be replayed
        # JPEG: exact with the same libjpeg build; one grey level otherwise (README §7).
        _close(torch.from_numpy(out["lq_jpeg"] * 255), ref["lq_jpeg"] * 255, 1.0 + 1e-4, "lq_jpeg*255")
        _close(torch.from_numpy(np.rint(out["lq"] * 255)), ref["lq"], 1.0, "lq")
