"""Web demo of DifFace: `python app.py [--cfg NAME] [--host 127.0.0.1] [--port 7860] [--device auto]`.

A Gradio page around the code of `inference.py`: the upload is planned as a one-file batch
(`datapipe.jobs.plan_jobs`), restored by `inference.run_aligned` or `inference.run_photos`,
and the files they write are shown. The networks are built once at start; the sampling
settings of each request (start step, steps, sampler) make a new `DifFace` around them.

Serving strangers: one queue with a concurrency limit; uploads above `--max-file-mb` are refused
by the server and images above `--max-pixels` from their header, before anything is decoded;
every bad upload gets a message in the page; only files the app itself wrote are served.
"""
from __future__ import annotations

import argparse
import atexit
import contextlib
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import inference  # noqa: E402
from datapipe.image_io import image_size, read_image, tensor_to_uint8  # noqa: E402
from datapipe.jobs import PlanError, plan_jobs  # noqa: E402
from models.checkpoint import WeightsError  # noqa: E402
from models.difface import DifFace  # noqa: E402
from models.pipeline import DEVICES, ConfigError, build_difface, make_difface, pick_device, pick_dtype  # noqa: E402
from models.samplers import SAMPLERS  # noqa: E402

CLI_DEFAULTS = inference.parse_args(["-i", "-", "-o", "-"])  # the demo follows the CLI's defaults
MAX_SAMPLES, MAX_STEPS, MAX_UPSCALE = 4, 250, 4
START_STEP_HELP = ("Start step N (of 1000): the estimate is diffused to step N and sampled back. "
                   "Small N keeps closer to the input (fidelity), large N lets the prior invent more (realism).")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="DifFace web demo (Gradio).")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 = every interface "
                   "(default: %(default)s)")
    p.add_argument("--port", type=int, default=7860, help="port to listen on (default: %(default)s)")
    p.add_argument("--cfg", default=inference.DEFAULT_CFG,
                   help="model preset or YAML file, as inference.py's --cfg (default: %(default)s)")
    p.add_argument("--device", default="auto", choices=DEVICES, help="where to run (default: %(default)s)")
    p.add_argument("--weights-dir", default=None, help="where weight files are looked up, as inference.py")
    p.add_argument("--no-download", dest="download", action="store_false", help="never download missing weights")
    p.add_argument("--max-pixels", type=float, default=CLI_DEFAULTS.max_pixels,
                   help="larger images are refused, from their header before decoding (default: %(default)g)")
    p.add_argument("--max-file-mb", type=float, default=20.0, help="larger uploads are refused (default: %(default)g)")
    p.add_argument("--concurrency", type=int, default=1,
                   help="restorations run at the same time (default: %(default)s)")
    p.add_argument("--queue-size", type=int, default=20,
                   help="waiting requests beyond this are turned away (default: %(default)s)")
    opts = p.parse_args(argv)
    if opts.concurrency < 1 or opts.queue_size < 1 or opts.max_pixels <= 0 or opts.max_file_mb <= 0:
        p.error("--concurrency, --queue-size, --max-pixels and --max-file-mb must be positive")
    return opts


class UploadError(ValueError):
    """An upload the demo does not take; the message is shown to the user."""


def check_upload(path: Path, max_pixels: float) -> tuple[int, int]:
    """(width, height) of an uploaded image, checked from its header before anything is decoded.

    Raises UploadError for an empty file, a non-image, and an image above `max_pixels`.
    """
    name = path.name
    if path.stat().st_size == 0:
        raise UploadError(f"{name}: the file is empty")
    size = image_size(path)
    if size is None:
        raise UploadError(f"{name}: not an image file (PNG, JPEG, BMP, WebP or TIFF expected)")
    w, h = size
    if w * h > max_pixels:
        shape = f"{w}x{h} = " if h > 1 else ""
        raise UploadError(f"{name}: the image is {shape}{w * h / 1e6:.1f} megapixels, "
                          f"above this demo's limit of {max_pixels / 1e6:.1f}")
    return size


def raw_image_upload(**kwargs) -> gr.Image:
    """An image input whose upload reaches the handler as the uploaded file's path, unopened.

    gr.Image would open the file with PIL before the handler runs; here the checks come first.
    (Gradio has already made sure the path lies in its upload folder.)
    """
    image = gr.Image(type="filepath", **kwargs)
    image.preprocess = lambda payload: None if payload is None else str(payload.path)
    return image


class Restorer:
    """The model of the app, built once, and one restoration per request."""

    def __init__(self, opts: argparse.Namespace):
        self.opts = opts
        self.cfg = self.resolve([])
        self.device = pick_device(opts.device)
        self.dtype, note = pick_dtype(self.cfg.dtype, self.device)
        if note:
            print(f"warning: {note}", file=sys.stderr)
        self.base = build_difface(self.cfg, self.device, opts.weights_dir, opts.download, dtype=self.dtype)
        self.workdir = Path(tempfile.mkdtemp(prefix="difface-app-"))
        atexit.register(shutil.rmtree, self.workdir, True)

    def cli_args(self, src: str, out: Path, extra: list[str]) -> argparse.Namespace:
        """inference.py's own arguments for this request (the same parser, the same defaults)."""
        argv = ["-i", src, "-o", str(out), "--cfg", str(self.opts.cfg), "--device", self.opts.device,
                "--max-pixels", str(self.opts.max_pixels)] + extra
        if self.opts.weights_dir:
            argv += ["--weights-dir", self.opts.weights_dir]
        try:
            with contextlib.redirect_stderr(io.StringIO()) as err:
                return inference.parse_args(argv)
        except SystemExit:  # argparse refused a value; its last line says which
            raise UploadError(err.getvalue().strip().splitlines()[-1].split("error: ", 1)[-1]) from None

    def resolve(self, extra: list[str]):
        return inference.resolve_config(self.cli_args("-", Path("-"), extra))

    def method(self, cfg, progress) -> DifFace:
        """A DifFace with the request's sampling settings around the shared networks.

        The prior is wrapped to move the progress bar at every reverse step.
        """
        base, calls = self.base, [0]

        def prior(x, t):
            n = len(method.timesteps)
            calls[0] += 1
            done, rnd = (calls[0] - 1) % n + 1, (calls[0] - 1) // n + 1
            progress((done, n), desc=f"reverse step {done}/{n}" + (f" (pass {rnd})" if rnd > 1 else ""))
            return base.prior(x, t)

        method = make_difface(cfg, base.estimator, prior, self.dtype)
        return method

    def new_folder(self) -> Path:
        """A fresh output folder per request; folders older than an hour are removed."""
        for old in self.workdir.iterdir():
            if time.time() - old.stat().st_mtime > 3600:
                shutil.rmtree(old, ignore_errors=True)
        return Path(tempfile.mkdtemp(dir=self.workdir))

    def __call__(self, upload, aligned, start_step, steps, sampler, num_samples, seed, upscale, show_estimate,
                 allow_downscale=False, progress=gr.Progress()):
        try:
            return self.restore(upload, aligned, start_step, steps, sampler, num_samples, seed, upscale,
                                show_estimate, progress, allow_downscale)
        except (UploadError, ConfigError, PlanError, ValueError, TypeError) as e:
            raise gr.Error(str(e), print_exception=False) from None

    def restore(self, upload, aligned, start_step, steps, sampler, num_samples, seed, upscale, show_estimate,
                progress, allow_downscale=False):
        if not upload:
            raise UploadError("upload an image first")
        src = Path(upload)
        check_upload(src, self.opts.max_pixels)
        num_samples, steps, upscale = int(num_samples), int(steps or 0), int(upscale)
        if not (1 <= num_samples <= MAX_SAMPLES and 0 <= steps <= MAX_STEPS and 1 <= upscale <= MAX_UPSCALE):
            raise UploadError(f"samples 1-{MAX_SAMPLES}, steps 0-{MAX_STEPS} and upscale 1-{MAX_UPSCALE} only")
        out = self.new_folder()
        extra = ["--start-step", str(int(start_step)), "--sampler", str(sampler), "--num-samples", str(num_samples),
                 "--seed", str(int(seed)), "--upscale", str(upscale), "--save-faces"]
        extra += ["--steps", str(steps)] if steps else []
        extra += ["--aligned", "--save-estimate"] if aligned else []
        extra += ["--allow-downscale"] if allow_downscale else []
        args = self.cli_args(str(src), out, extra)
        cfg = inference.resolve_config(args)
        method = self.method(cfg, progress)
        jobs = plan_jobs(src, out, False, cfg.num_samples, aligned, subdir="" if aligned else "restored_image")
        job = jobs[0]
        job.record.update(aligned=aligned)
        progress(0, desc="estimator")
        start = time.perf_counter()
        bar = _NoBar()
        if aligned:
            inference.run_aligned(method, cfg, jobs, self.device, bar, args)
        else:
            inference.run_photos(method, cfg, jobs, self.device, bar, args)
        if job.record.get("status") == "failed":
            raise UploadError(job.record["error"].replace(str(src), src.name))
        return self.outputs(src, out, job, aligned, show_estimate, time.perf_counter() - start, len(method.timesteps))

    def outputs(self, src: Path, out: Path, job, aligned: bool, show_estimate: bool, seconds: float, evals: int):
        restored = [str(p) for p in job.outputs]
        with Image.open(restored[0]) as first:  # the header only
            size = first.size
        before = Image.fromarray(tensor_to_uint8(read_image(src)))
        if before.size != size:  # whole photo: the input enlarged like the background
            before = before.resize(size, Image.LANCZOS)
        samples = [(p, f"sample {k}") for k, p in enumerate(restored)]
        faces = []
        for crop in sorted((out / "cropped_faces").glob("*.png")):
            faces.append((str(crop), f"face {crop.stem.rsplit('_', 1)[-1]}: input"))
            faces += [(str(p), f"face {crop.stem.rsplit('_', 1)[-1]}: restored")
                      for p in sorted((out / "restored_faces").glob(f"{crop.stem}*.png"))]
        estimate = str(job.estimate) if aligned and show_estimate and job.estimate else None
        if aligned:
            what = f"{size[0]}x{size[1]} face"
        else:
            found = len(job.record.get("faces", []))
            kept = len(job.record.get("kept_large", []))
            what = f"{found} face(s) restored" + ("" if found or kept else ": the photo is only upscaled")
            if kept:
                what += (f"; {kept} face(s) larger than the model's {self.cfg.image_size} px left as they were "
                         "(tick 'restore large faces too' to restore them at the model's size)")
        note = (f"{what}; {evals} network evaluations per face and sample; {seconds:.1f} s"
                + ("" if estimate or not show_estimate else "; the estimator output is shown for aligned faces"))
        return ((np.asarray(before), restored[0]), samples, gr.update(value=estimate, visible=estimate is not None),
                restored[0], gr.update(value=faces, visible=not aligned), note)


class _NoBar:
    """The progress-bar interface inference.run_* report to; the page has its own bar."""

    def update(self, n: int = 1) -> None:
        pass


def build_app(restorer: Restorer) -> gr.Blocks:
    cfg = restorer.cfg
    with gr.Blocks(title="DifFace", delete_cache=(3600, 3600)) as demo:  # uploads and results live an hour
        gr.Markdown(f"# DifFace: blind face restoration\nModel: **{cfg.name}** ({cfg.image_size}x{cfg.image_size} "
                    f"faces) on {restorer.device}. Upload a face crop or a photo, then press *Restore*.")
        with gr.Row():
            with gr.Column():
                upload = raw_image_upload(label="input image", sources=["upload"], height=320,
                                  elem_id="input-image")
                aligned = gr.Checkbox(label="aligned face crop (off: a whole photo, faces are detected)",
                                      value=False, elem_id="aligned")
                start_step = gr.Slider(0, cfg.diffusion.steps - 1, value=cfg.sampling.start_step, step=1,
                                       label="start step N", info=START_STEP_HELP, elem_id="start-step")
                steps = gr.Slider(0, MAX_STEPS, value=cfg.sampling.steps or 0, step=1,
                                  label="steps (0 = the config's grid)", elem_id="steps")
                sampler = gr.Dropdown(sorted(SAMPLERS), value=cfg.sampling.sampler, label="sampler")
                num_samples = gr.Slider(1, MAX_SAMPLES, value=1, step=1, label="samples (different noise)",
                                        elem_id="num-samples")
                seed = gr.Number(value=cfg.seed, precision=0, label="seed")
                upscale = gr.Slider(1, MAX_UPSCALE, value=CLI_DEFAULTS.upscale, step=1, label="upscale (whole photos)")
                show_estimate = gr.Checkbox(label="also show the estimator output f(y)", value=False,
                                            elem_id="show-estimate")
                allow_downscale = gr.Checkbox(label="restore large faces too (whole photos: faces above 1.5x the "
                                              "model's size are otherwise left as they were)", value=False)
                button = gr.Button("Restore", variant="primary", elem_id="restore")
            with gr.Column():
                compare = gr.ImageSlider(label="before / after", type="filepath", format="png", elem_id="compare")
                note = gr.Markdown(elem_id="note")
                download = gr.File(label="restored PNG", elem_id="download")
                gallery = gr.Gallery(label="samples", columns=4, height=240, format="png", elem_id="samples")
                estimate = gr.Image(label="estimator output f(y)", visible=False, format="png", elem_id="estimate")
                faces = gr.Gallery(label="faces found (input, restored)", columns=4, height=300, format="png",
                                   visible=False, elem_id="faces")
        button.click(restorer, [upload, aligned, start_step, steps, sampler, num_samples, seed, upscale, show_estimate,
                                allow_downscale],
                     [compare, gallery, estimate, download, faces, note])
    return demo


def main(argv=None) -> int:
    opts = parse_args(argv)
    try:
        restorer = Restorer(opts)
    except (ConfigError, WeightsError, ImportError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    demo = build_app(restorer)
    demo.queue(max_size=opts.queue_size, default_concurrency_limit=opts.concurrency, api_open=False)
    font = ["ui-sans-serif", "system-ui", "sans-serif"]  # no web fonts: the page works offline
    demo.launch(server_name=opts.host, server_port=opts.port, max_file_size=int(opts.max_file_mb * 1e6),
                show_error=False, theme=gr.themes.Default(font=font, font_mono=["ui-monospace", "monospace"]),
                footer_links=[])
    return 0


if __name__ == "__main__":
    sys.exit(main())
