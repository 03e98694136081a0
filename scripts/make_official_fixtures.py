"""Rebuild the official reference outputs in tests/fixtures/official from the official DifFace code.

    python scripts/make_official_fixtures.py --official ~/src/DifFace --inputs tests/fixtures/official \\
        --out /tmp/official_rebuilt --compare tests/fixtures/official
    python scripts/make_official_fixtures.py --official ~/src/DifFace --out /tmp/official_fresh

--official is a checkout of github.com/zsyOAOA/DifFace at commit 5c9ab80. Its modules are imported
from that folder and run unmodified on the CPU in float32: the networks are tiny configurations of the
official classes with random weights, every `torch.randn_like` draw of the official diffusion code is
answered with a stored tensor, and the intermediate values are read with forward hooks and by wrapping
module functions. The official requirements timm, kornia and einops must be importable (gdown, which
only the official download helpers use, is replaced by an empty module when it is missing).

With --inputs DIR the network weights and every input (noise, images) come from an existing reference
set and only the outputs are computed again: on the machine, library versions and thread count that
made that set this rebuilds it exactly; elsewhere the float32 results differ in the last bits. Without
it, new weights and inputs are drawn from fixed seeds (the real faces come from --faces) and the result
is a new, equally valid reference set; point the parity tests at it with DIFFACE_FIXTURES=DIR.
--compare DIR prints, file by file, how the new files differ from DIR.
tests/fixtures/official/README.md describes every file.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OFFICIAL_COMMIT = "5c9ab80"
SETTINGS = dict(steps=1000, learn_sigma=True, sigma_small=False, noise_schedule="linear", use_kl=False,
                predict_xstart=False, rescale_timesteps=False, rescale_learned_sigmas=True)
RESPACINGS = ["ddim250", "250", "ddim100", "50", "1000", "10,15,20"]
SMALL = {  # tiny configurations of the official classes (file stem -> class, kwargs)
    "unet": ("models.unet.UNetModel", dict(
        image_size=64, in_channels=3, model_channels=32, out_channels=6, num_res_blocks=[1, 2, 1],
        attention_resolutions=[16], dropout=0, channel_mult=[1, 2, 2], conv_resample=True, dims=2,
        use_fp16=False, num_head_channels=32, use_scale_shift_norm=True, resblock_updown=False,
        use_new_attention_order=False)),
    "swinir": ("models.swinir.SwinIR", dict(
        img_size=16, patch_size=1, in_chans=3, embed_dim=24, depths=[2, 2], num_heads=[2, 2], window_size=8,
        mlp_ratio=2, sf=8, img_range=1.0, upsampler="nearest+conv", resi_connection="1conv", unshuffle=True,
        unshuffle_scale=8)),
    "lama": ("models.lama.ffc.FFCResNetGenerator", dict(
        input_nc=4, output_nc=3, ngf=16, n_downsampling=2, n_blocks=2, add_out_act="sigmoid",
        init_conv_kwargs=dict(ratio_gin=0, ratio_gout=0, enable_lfu=False),
        downsample_conv_kwargs=dict(ratio_gin=0, ratio_gout=0, enable_lfu=False),
        resnet_conv_kwargs=dict(ratio_gin=0.75, ratio_gout=0.75, enable_lfu=False))),
}
FULL = {  # full-size networks: name -> (official sample config, section)
    "unet_ffhq512": ("iddpm_ffhq512_swinir.yaml", "model"),
    "swinir_face512": ("iddpm_ffhq512_swinir.yaml", "model_ir"),
    "unet_ffhq256": ("difface_inpainting_lama256.yaml", "model"),
    "lama_inpainting256": ("difface_inpainting_lama256.yaml", "model_ir"),
}
SEEDS = dict(unet=1, swinir=2, lama=3, unet_io=11, swinir_io=12, lama_io=13, ddim_trajectory=21,
             ddim_step_eta=22, ddpm_step=23, difface_restore=31, difface_restore_resized=32, degradation=41)
FACES = {  # real faces of the fresh set, relative to --faces
    "difface_restore": "lq_cropped/codeformer_difface_cropped_faces/0143.png",
    "difface_restore_resized": "lq_cropped/codeformer_difface_cropped_faces/0240.png",
    "lama_io": "hq_aligned/ffhq_512/00001.jpg",
    "degradation": "hq_aligned/ffhq_512/00000.jpg",
}
FILES = ([f"{s}{ext}" for s in SMALL for ext in (".json", ".pth", "_io.pt")] + ["full_configs.json"]
         + [f"keys_{n}.txt" for n in FULL]
         + [f"{n}.pt" for n in ("diffusion", "ddim_trajectory", "ddim_step_eta", "ddpm_step", "difface_restore",
                                "difface_restore_resized", "degradation")])


class Official:
    """The official modules, imported from the checkout (they shadow this repository's own packages)."""

    def __init__(self, path: Path):
        if not (path / "models" / "gaussian_diffusion.py").is_file() or not (path / "sampler.py").is_file():
            raise SystemExit(f"error: {path} is not a checkout of zsyOAOA/DifFace (no models/gaussian_diffusion.py)")
        clash = [m for m in ("models", "datapipe", "utils", "basicsr", "sampler") if m in sys.modules]
        assert not clash, f"modules imported before the official ones: {clash}"
        sys.path.insert(0, str(path))
        if importlib.util.find_spec("gdown") is None:  # imported by facelib, used only for downloads
            sys.modules["gdown"] = types.ModuleType("gdown")
        self.path = path
        self.script_util = self._import("models.script_util")
        self.sampler = self._import("sampler")
        self.degradations = self._import("basicsr.data.degradations")
        self.face_testing = self._import("datapipe.face_degradation_testing")

    def _import(self, name: str):
        module = importlib.import_module(name)
        assert Path(module.__file__).resolve().is_relative_to(self.path.resolve()), f"{name} is not the official one"
        return module

    def build(self, target: str, params: dict):
        module, cls = target.rsplit(".", 1)
        return getattr(self._import(module), cls)(**params)

    def diffusion(self, respacing: str):
        return self.script_util.create_gaussian_diffusion(**SETTINGS, timestep_respacing=respacing)


# ---- random weights and inputs ------------------------------------------------------------------

def randomize(net, gen):
    """Overwrite every parameter: norm weights 1 + N(0, 0.1^2), Swin relative-position tables
    N(0, 0.5^2), other 1-D parameters N(0, 0.02^2), all other weights N(0, 0.05^2)."""
    import torch
    norms = (torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.BatchNorm2d)
    norm_weights = {id(m.weight) for m in net.modules() if isinstance(m, norms) and m.weight is not None}
    with torch.no_grad():
        for name, p in net.named_parameters():
            z = torch.randn(p.shape, generator=gen)
            if id(p) in norm_weights:
                p.copy_(1 + 0.1 * z)
            elif name.endswith("relative_position_bias_table"):
                p.copy_(0.5 * z)
            else:
                p.copy_((0.02 if p.ndim == 1 else 0.05) * z)


def set_batchnorm_statistics(net, gen):
    """Running statistics from one train-mode pass over a random masked batch, then each variance
    scaled by U(0.5, 1.5) and each mean shifted by N(0, (0.1 std)^2)."""
    import torch
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    mask = torch.zeros(4, 1, 64, 64)
    for k in range(4):
        y, x, h, w = (int(v) for v in torch.randint(0, 32, (4,), generator=gen))
        mask[k, :, y:y + h + 8, x:x + w + 8] = 1
    batch = torch.cat([torch.rand(4, 3, 64, 64, generator=gen) * (1 - mask), mask], 1)
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: one pass gives the batch statistics
    net.train()
    with torch.no_grad():
        net(batch)
        for m in bns:
            m.momentum = 0.1
            m.running_var.mul_(0.5 + torch.rand(m.running_var.shape, generator=gen))
            m.running_mean.add_(0.1 * m.running_var.sqrt() * torch.randn(m.running_mean.shape, generator=gen))
    net.eval()


def read_face(path: Path, width: int, height: int, bgr_uint8: bool = False):
    """A face image resized with cv2.INTER_AREA: (1, 3, H, W) float32 RGB in [0, 1], or HxWx3 uint8 BGR."""
    import cv2
    import torch
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise SystemExit(f"error: cannot read {path}")
    if img.shape[:2] != (height, width):
        img = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)
    if bgr_uint8:
        return img
    return torch.from_numpy(img[:, :, ::-1].copy()).permute(2, 0, 1)[None].float() / 255


def lama_input(face):
    """A face with zeros in the hole and the hole mask (a rectangle and a thin diagonal stroke) as channel 3."""
    import cv2
    import numpy as np
    import torch
    mask = np.zeros((64, 64), np.uint8)
    cv2.rectangle(mask, (14, 22), (41, 45), 1, thickness=-1)
    cv2.line(mask, (4, 58), (60, 4), 1, thickness=2)
    m = torch.from_numpy(mask).float()[None, None]
    return torch.cat([face * (1 - m), m], 1)


@contextlib.contextmanager
def replayed_randn_like(noises):
    """`torch.randn_like` returns the given tensors in order (the official code draws all its noise so)."""
    import torch
    queue, original = list(noises), torch.randn_like

    def replay(x, **kwargs):
        assert queue, "the official code drew more noise than was provided"
        z = queue.pop(0)
        assert z.shape == x.shape, (tuple(z.shape), tuple(x.shape))
        return z.to(dtype=x.dtype).clone()

    torch.randn_like = replay
    try:
        yield
    finally:
        torch.randn_like = original
    assert not queue, f"{len(queue)} provided noise tensors were not drawn"


@contextlib.contextmanager
def recorded_calls(net):
    """Inputs (positional) and outputs of every forward call of `net`."""
    calls = []
    handle = net.register_forward_hook(lambda m, args, out: calls.append((args, out)))
    try:
        yield calls
    finally:
        handle.remove()


# ---- the reference set --------------------------------------------------------------------------

class Builder:
    """Builds each file's contents; inputs come from --inputs when given, else from SEEDS and --faces."""

    def __init__(self, official: Official, inputs: Path | None, faces: Path):
        import torch
        self.off, self.inputs, self.faces, self.torch = official, inputs, faces, torch
        self.nets = {stem: self._network(stem, target, params) for stem, (target, params) in SMALL.items()}

    def _network(self, stem, target, params):
        net = self.off.build(target, params)
        if self.inputs is not None:
            net.load_state_dict(self.torch.load(self.inputs / f"{stem}.pth", weights_only=True), strict=True)
        else:
            gen = self.gen(stem)
            randomize(net, gen)
            if stem == "lama":
                set_batchnorm_statistics(net, gen)
        return net.eval()

    def gen(self, name: str):
        return self.torch.Generator().manual_seed(SEEDS[name])

    def face(self, name: str, width: int, height: int, bgr_uint8: bool = False):
        """The real face of a fresh set (None when the inputs are taken from --inputs)."""
        return None if self.inputs is not None else read_face(self.faces / FACES[name], width, height, bgr_uint8)

    def given(self, name: str, fresh: dict) -> dict:
        """The inputs of one file: the stored ones of --inputs, else the fresh ones."""
        if self.inputs is None:
            return fresh
        ref = self.torch.load(self.inputs / name, weights_only=True)
        return {k: ref[k] for k in fresh}

    def network_io(self) -> dict:
        torch, unet, swinir, lama = self.torch, self.nets["unet"], self.nets["swinir"], self.nets["lama"]
        g, gs = self.gen("unet_io"), self.gen("swinir_io")
        io = self.given("unet_io.pt", dict(x=torch.randn(2, 3, 64, 64, generator=g), t=torch.tensor([7, 613])))
        files = {"unet_io.pt": io | dict(out=unet(io["x"], io["t"]))}
        io = self.given("swinir_io.pt", dict(x_match=torch.rand(2, 3, 128, 128, generator=gs),
                                            x_large=torch.rand(1, 3, 192, 256, generator=gs)))
        files["swinir_io.pt"] = dict(x_match=io["x_match"], out_match=swinir(io["x_match"]),
                                     x_large=io["x_large"], out_large=swinir(io["x_large"]))
        face = self.face("lama_io", 64, 64)
        io = self.given("lama_io.pt", dict(x=None if face is None else lama_input(face)))
        files["lama_io.pt"] = io | dict(out=lama(io["x"]))
        return files

    def schedules(self) -> dict:
        torch = self.torch
        base = self.off.diffusion("")  # all 1000 steps (betas recomputed from alphas_cumprod, as respacing does)
        respacings = {}
        for spec in RESPACINGS:
            d = self.off.diffusion(spec)
            respacings[spec] = {"timestep_map": list(d.timestep_map)} | {
                k: torch.from_numpy(getattr(d, k).copy()) for k in (
                    "alphas_cumprod", "betas", "alphas_cumprod_prev", "posterior_log_variance_clipped",
                    "posterior_mean_coef1", "posterior_mean_coef2")}
        return {"diffusion.pt": dict(betas=torch.from_numpy(base.betas.copy()),
                                     alphas_cumprod=torch.from_numpy(base.alphas_cumprod.copy()),
                                     respacings=respacings, settings=dict(SETTINGS))}

    def trajectory(self) -> dict:
        """`ddim_sample_loop` from respaced index 20 of 'ddim50', eta 0, per step from its progressive form."""
        torch, unet = self.torch, self.nets["unet"]
        d, start = self.off.diffusion("ddim50"), 20
        x = self.given("ddim_trajectory.pt", dict(x_start=torch.randn(1, 3, 64, 64, generator=self.gen(
            "ddim_trajectory"))))["x_start"]
        zeros = [torch.zeros_like(x)] * (2 * start)  # eta 0: the step noise is multiplied by 0
        with recorded_calls(unet) as calls, replayed_randn_like(zeros):
            outs = list(d.ddim_sample_loop_progressive(unet, x.shape, noise=x, start_timesteps=start, eta=0.0))
            final = d.ddim_sample_loop(unet, x.shape, noise=x, start_timesteps=start, eta=0.0)
        assert torch.equal(final, outs[-1]["sample"])
        return {"ddim_trajectory.pt": dict(
            respacing="ddim50", eta=0.0, x_start=x, respaced_indices=list(range(start))[::-1],
            timesteps=torch.cat([args[1] for args, _ in calls[:start]]),
            xs=torch.stack([o["sample"] for o in outs]), pred_xstarts=torch.stack([o["pred_xstart"] for o in outs]),
            final=final)}

    def single_steps(self) -> dict:
        """One `ddim_sample` step (eta 0.5) and one `p_sample` step, both at respaced index 25."""
        torch, unet, files, index = self.torch, self.nets["unet"], {}, 25
        for name, spec, eta in (("ddim_step_eta", "ddim50", 0.5), ("ddpm_step", "50", None)):
            d, g, t = self.off.diffusion(spec), self.gen(name), torch.tensor([index])
            io = self.given(f"{name}.pt", dict(x_t=torch.randn(1, 3, 64, 64, generator=g),
                                               noise=torch.randn(1, 3, 64, 64, generator=g)))
            with recorded_calls(unet) as calls, replayed_randn_like([io["noise"]]):
                out = (d.ddim_sample(unet, io["x_t"], t, eta=eta) if eta is not None
                       else d.p_sample(unet, io["x_t"], t, y0=None))
            rec = dict(respacing=spec) | ({"eta": eta} if eta is not None else {}) | dict(
                index=index, t_base=d.timestep_map[index], t_prev_base=d.timestep_map[index - 1])
            if eta is not None:
                rec |= dict(alpha_bar=float(d.alphas_cumprod[index]),
                            alpha_bar_prev=float(d.alphas_cumprod_prev[index]))
            rec |= dict(x_t=io["x_t"], model_out=calls[0][1], noise=io["noise"], x_prev=out["sample"],
                        pred_xstart=out["pred_xstart"])
            if eta is None:
                mv = d.p_mean_variance(unet, io["x_t"], t)
                rec |= dict(mean=mv["mean"], log_variance=mv["log_variance"])
            files[f"{name}.pt"] = rec
        return files

    def restorations(self) -> dict:
        """The official aligned pipeline, `DifFaceSampler.sample_func_ir_aligned`, at 64 px from index 20."""
        from omegaconf import OmegaConf
        torch, unet, swinir, files = self.torch, self.nets["unet"], self.nets["swinir"], {}
        sampler = self.off.sampler.DifFaceSampler.__new__(self.off.sampler.DifFaceSampler)  # no weight files, no CUDA
        sampler.configs = OmegaConf.create({"im_size": 64})
        sampler.model, sampler.model_ir, sampler.dtype = unet, swinir, torch.float32
        respacing, start = "ddim50", 20
        for name, (h, w), eta in (("difface_restore", (64, 64), 0.0), ("difface_restore_resized", (96, 80), 0.5)):
            sampler.diffusion = d = self.off.diffusion(respacing)
            g = self.gen(name)
            fresh = dict(y0=self.face(name, w, h), q_noise=torch.randn(1, 3, 64, 64, generator=g))
            if eta > 0:
                fresh["step_noises"] = torch.randn(start, 1, 3, 64, 64, generator=g)
            io = self.given(f"{name}.pt", fresh)
            steps = list(io["step_noises"]) if eta > 0 else [torch.zeros(1, 3, 64, 64)] * start
            with recorded_calls(unet) as calls, recorded_calls(swinir) as est, \
                    replayed_randn_like([io["q_noise"]] + steps):
                final, f_y0 = sampler.sample_func_ir_aligned(io["y0"], start_timesteps=start, eta=eta)
            files[f"{name}.pt"] = dict(
                respacing=respacing, start_index=start, eta=eta, im_size=64, y0=io["y0"],
                estimator_input=est[0][0][0], f_y0=f_y0, q_noise=io["q_noise"], q_sample_t_base=d.timestep_map[start],
                alpha_bar_start=float(d.alphas_cumprod[start]), x_start=calls[0][0][0],
                timesteps=torch.cat([args[1] for args, _ in calls]), final=final,
            ) | ({"step_noises": io["step_noises"]} if eta > 0 else {})
        return files

    def degradation(self) -> dict:
        """Blur kernels and the CelebA-Test style degradation (`face_degradation`) with its intermediates,
        read by wrapping the basicsr functions it calls."""
        import numpy as np
        torch, deg = self.torch, self.off.degradations
        face = self.face("degradation", 512, 512, bgr_uint8=True)
        hq = self.given("degradation.pt", dict(hq=None if face is None else torch.from_numpy(face)))["hq"]
        seen, original = {}, {k: getattr(deg, k) for k in ("bivariate_Gaussian", "add_gaussian_noise",
                                                             "add_jpg_compression")}
        blur, noise, jpeg = original.values()
        deg.bivariate_Gaussian = lambda *a, **k: seen.setdefault("blur_kernel", blur(*a, **k))
        deg.add_gaussian_noise = lambda x, *a, **k: noise(seen.setdefault("lq_down", x), *a, **k)  # its input
        deg.add_jpg_compression = lambda *a, **k: seen.setdefault("lq_jpeg", jpeg(*a, **k))
        np.random.seed(SEEDS["degradation"])  # the noise step draws even at level 0
        p = dict(sf=8, sig_x=8.0, sig_y=4.0, theta=math.pi / 2, nf=0.0, qf=50)
        try:
            lq = self.off.face_testing.face_degradation(hq.numpy().astype(np.float32) / 255.0, **p)
        finally:
            for k, f in original.items():
                setattr(deg, k, f)
        size = 41
        return {"degradation.pt": dict(
            kernel_size=size,
            kernel_aniso=torch.from_numpy(deg.bivariate_Gaussian(size, 4.0, 8.0, math.pi / 4, isotropic=False)),
            kernel_aniso_sig_x=4.0, kernel_aniso_sig_y=8.0, kernel_aniso_theta=math.pi / 4,
            kernel_iso=torch.from_numpy(deg.bivariate_Gaussian(size, 3.0, 3.0, 0.0, isotropic=True)),
            kernel_iso_sigma=3.0, hq=hq, lq=torch.from_numpy(np.clip(np.rint(lq * 255), 0, 255).astype(np.uint8)),
            **{k: torch.from_numpy(np.ascontiguousarray(seen[k])) for k in ("blur_kernel", "lq_down", "lq_jpeg")},
            **p)}

    def full_size(self) -> dict[str, str]:
        """Constructor kwargs of the four released networks (from the official sample configs) and the
        name, shape and dtype of every state_dict entry."""
        from omegaconf import OmegaConf
        configs, files = {}, {}
        for name, (cfg_file, section) in FULL.items():
            cfg = OmegaConf.load(self.off.path / "configs" / "sample" / cfg_file)
            configs[name] = OmegaConf.to_container(cfg[section].params, resolve=True)
            state = self.off.build(cfg[section].target, configs[name]).state_dict()
            files[f"keys_{name}.txt"] = "".join(
                f"{k}\t{tuple(v.shape)}\t{str(v.dtype).removeprefix('torch.')}\n" for k, v in state.items())
        files["full_configs.json"] = json.dumps(configs, indent=2) + "\n"
        return files


# ---- writing and comparing ----------------------------------------------------------------------

def _differences(a, b, key: str = "") -> list[str]:
    import torch
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{key}{k}: only in one file" for k in sorted(set(a) ^ set(b))]
        return out + [d for k in a if k in b for d in _differences(a[k], b[k], f"{key}{k}.")]
    if torch.is_tensor(a) and torch.is_tensor(b):
        if a.shape != b.shape or a.dtype != b.dtype:
            return [f"{key[:-1]}: {tuple(a.shape)} {a.dtype} vs {tuple(b.shape)} {b.dtype}"]
        err = (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
        return [] if torch.equal(a, b) else [f"{key[:-1]}: max |error| {err:.3g}"]
    return [] if type(a) is type(b) and a == b else [f"{key[:-1]}: {a!r} vs {b!r}"]


def compare(out: Path, ref: Path) -> None:
    import torch
    for name in FILES:
        if not (ref / name).is_file():
            print(f"{name}: not in {ref}")
            continue
        if name.endswith((".pt", ".pth")):
            diffs = _differences(torch.load(out / name, weights_only=True), torch.load(ref / name, weights_only=True))
        else:
            diffs = [] if (out / name).read_bytes() == (ref / name).read_bytes() else ["the text differs"]
        more = " ..." if len(diffs) > 6 else ""
        print(f"{name}: " + ("; ".join(diffs[:6]) + more if diffs else "bit-identical"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official", type=Path, required=True,
                   help=f"checkout of github.com/zsyOAOA/DifFace at commit {OFFICIAL_COMMIT}")
    p.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "official",
                   help="folder for the reference set (default: %(default)s)")
    p.add_argument("--inputs", type=Path, default=None,
                   help="take the network weights and all inputs from this reference set; only outputs are recomputed")
    p.add_argument("--faces", type=Path, default=REPO / "tests" / "fixtures" / "faces",
                   help="real face images of a fresh set (default: %(default)s)")
    p.add_argument("--compare", type=Path, default=None,
                   help="report, file by file, how the new set differs from this one")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads; the last bits can differ between thread counts (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace files already in --out")
    args = p.parse_args(argv)
    if args.inputs is not None and not (args.inputs / "unet.pth").is_file():
        p.error(f"--inputs {args.inputs} holds no reference set (no unet.pth)")
    existing = [n for n in FILES if (args.out / n).exists()]
    if existing and not args.overwrite:
        p.error(f"{args.out} already holds {len(existing)} reference files; pass --overwrite to replace them")

    import torch
    official = Official(args.official.expanduser().resolve())
    torch.set_num_threads(args.threads)
    builder = Builder(official, args.inputs, args.faces)
    args.out.mkdir(parents=True, exist_ok=True)
    texts = {f"{stem}.json": json.dumps(params, indent=2) + "\n" for stem, (_, params) in SMALL.items()}
    with torch.no_grad():
        tensors = {f"{stem}.pth": net.state_dict() for stem, net in builder.nets.items()}
        for part in (builder.network_io, builder.schedules, builder.trajectory, builder.single_steps,
                     builder.restorations, builder.degradation):
            tensors |= part()
            print(f"{part.__name__}: done", file=sys.stderr)
    texts |= builder.full_size()
    for name, value in tensors.items():
        torch.save(value, args.out / name)
    for name, text in texts.items():
        (args.out / name).write_text(text)
    assert set(tensors) | set(texts) == set(FILES)
    print(f"wrote {len(FILES)} files to {args.out}", file=sys.stderr)
    if args.compare is not None:
        compare(args.out, args.compare)
    return 0


if __name__ == "__main__":
    sys.exit(main())
