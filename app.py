"""Web demo of DifFace: `python app.py [--cfg NAME] [--host 127.0.0.1] [--port 7860] [--device auto]`.

A Gradio page over the library: one `difface.Restorer` is built at start, and each request calls
its `restore()` with the page's settings (start step, steps, sampler, samples, seed, upscale);
the images it returns are written to a fresh folder and shown. Errors are the library's
exceptions, shown in the page.

Serving strangers: one queue with a concurrency limit; uploads above `--max-file-mb` are refused
by the server and images above `--max-pixels` from their header, before anything is decoded;
every bad upload gets a message in the page; only files the app itself wrote are served.
"""
from __future__ import annotations

import argparse
import atexit
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from datapipe.image_io import image_size, write_image  # noqa: E402
from datapipe.jobs import sample_names  # noqa: E402
from difface.cli import DEFAULT_CFG  # noqa: E402
from difface.pipeline import ConfigError  # noqa: E402
from models.runtime import DEVICES  # noqa: E402
from difface.restorer import DEFAULT_MAX_PIXELS, InputError, Restorer  # noqa: E402
from models.checkpoint import WeightsError  # noqa: E402
from models.samplers import SAMPLERS  # noqa: E402

MAX_SAMPLES, MAX_STEPS, MAX_UPSCALE, DEFAULT_UPSCALE = 4, 250, 4, 2
KEEP_RESULTS = 64  # request folders kept on disk (the newest; a page shows its own result only)
START_STEP_HELP = ("Start step N (of 1000): the estimate is diffused to step N and sampled back. "
                   "Small N keeps closer to the input (fidelity), large N lets the prior invent more (realism).")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="DifFace web demo (Gradio).")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 = every interface "
                   "(default: %(default)s)")
    p.add_argument("--port", type=int, default=7860, help="port to listen on (default: %(default)s)")
    p.add_argument("--cfg", default=DEFAULT_CFG,
                   help="model preset or YAML file, as inference.py's --cfg (default: %(default)s)")
    p.add_argument("--device", default="auto", choices=DEVICES, help="where to run (default: %(default)s)")
    p.add_argument("--weights-dir", default=None, help="where weight files are looked up, as inference.py")
    p.add_argument("--no-download", dest="download", action="store_false", help="never download missing weights")
    p.add_argument("--max-pixels", type=float, default=DEFAULT_MAX_PIXELS,
                   help="larger images are refused, from their header before decoding (default: %(default)g)")
    p.add_argument("--max-output-pixels", type=float, default=DEFAULT_MAX_PIXELS,
                   help="whole photos whose restored image would be larger are refused, naming the largest upscale "
                        "that fits (default: %(default)g; about 20 bytes of memory per output pixel)")
    p.add_argument("--max-file-mb", type=float, default=20.0, help="larger uploads are refused (default: %(default)g)")
    p.add_argument("--concurrency", type=int, default=1,
                   help="restorations run at the same time (default: %(default)s)")
    p.add_argument("--queue-size", type=int, default=20,
                   help="waiting requests beyond this are turned away (default: %(default)s)")
    opts = p.parse_args(argv)
    if min(opts.concurrency, opts.queue_size, opts.max_pixels, opts.max_output_pixels, opts.max_file_mb) <= 0:
        p.error("--concurrency, --queue-size, --max-pixels, --max-output-pixels and --max-file-mb must be positive")
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


def _whole_number(value, what: str, low: int, high: int) -> int:
    """A page setting as an int in [low, high]; anything else is an UploadError naming it."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UploadError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(number) or number != int(number) or not low <= number <= high:
        raise UploadError(f"{what} must be a whole number from {low} to {high}, got {value!r}")
    return int(number)


class Handler:
    """The model of the app, built once, and one restoration per request."""

    def __init__(self, opts: argparse.Namespace):
        self.opts = opts
        self.restorer = Restorer(opts.cfg, device=opts.device, weights_dir=opts.weights_dir, download=opts.download,
                                 max_pixels=opts.max_pixels, max_output_pixels=opts.max_output_pixels)
        for note in self.restorer.notes:
            print(f"warning: {note}", file=sys.stderr)
        self.cfg, self.device = self.restorer.cfg, self.restorer.device
        self.workdir = Path(tempfile.mkdtemp(prefix="difface-app-"))
        atexit.register(shutil.rmtree, self.workdir, True)

    def new_folder(self) -> Path:
        """A fresh output folder per request. Results are kept only while a page can show them:
        folders older than an hour go, and beyond the newest KEEP_RESULTS the oldest go."""
        folders = sorted((p for p in self.workdir.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
        for number, old in enumerate(folders):
            if time.time() - old.stat().st_mtime > 3600 or number < len(folders) - KEEP_RESULTS + 1:
                shutil.rmtree(old, ignore_errors=True)
        return Path(tempfile.mkdtemp(dir=self.workdir))

    def __call__(self, upload, aligned, start_step, steps, sampler, num_samples, seed, upscale, show_estimate,
                 allow_downscale=False, progress=gr.Progress(), auto_start=False):
        try:
            return self.restore(upload, aligned, "auto" if auto_start else start_step, steps, sampler, num_samples,
                                seed, upscale, show_estimate, progress, allow_downscale)
        except (UploadError, ConfigError, InputError, ValueError, TypeError) as e:
            message = str(e)
            if upload:  # the upload's own name, never the server's path of it
                message = message.replace(str(Path(upload)), Path(upload).name)
            raise gr.Error(message, print_exception=False) from None

    def restore(self, upload, aligned, start_step, steps, sampler, num_samples, seed, upscale, show_estimate,
                progress, allow_downscale=False):
        if not upload:
            raise UploadError("upload an image first")
        src = Path(upload)
        check_upload(src, self.opts.max_pixels)
        try:
            num_samples = _whole_number(num_samples, "samples", 1, MAX_SAMPLES)
            steps = _whole_number(steps or 0, "steps", 0, MAX_STEPS)
            upscale = _whole_number(upscale, "upscale", 1, MAX_UPSCALE)
        except UploadError:
            raise UploadError(f"samples 1-{MAX_SAMPLES}, steps 0-{MAX_STEPS} and upscale 1-{MAX_UPSCALE} "
                              "only") from None
        if start_step != "auto":
            start_step = _whole_number(start_step, "start step", 0, self.cfg.diffusion.steps - 1)
        seed = _whole_number(seed, "seed", -2 ** 63, 2 ** 63 - 1)
        progress(0, desc="estimator")
        start = time.perf_counter()
        result = self.restorer.restore(
            src, aligned=bool(aligned), seed=seed, name=src.name, num_samples=num_samples, start_step=start_step,
            steps=steps or None, sampler=str(sampler), upscale=upscale, allow_downscale=bool(allow_downscale),
            progress=lambda done, total: progress((done, total), desc=f"reverse step {done}/{total}"))
        seconds = time.perf_counter() - start
        method = self.restorer.sampling(start_step, steps or None, str(sampler))
        chosen = [result.info.get("start_step")] if aligned else [f.start_step for f in result.faces]
        evals = (", ".join(f"N = {n} ({len(method.with_start_step(n).timesteps)} network evaluations)" for n in chosen)
                 if method.auto is not None and chosen else f"{len(method.timesteps)} network evaluations")
        return self.outputs(src, self.save(src, result, bool(aligned)), result, bool(aligned), show_estimate,
                            seconds, evals)

    def save(self, src: Path, result, aligned: bool) -> dict:
        """Write the result's images to a fresh folder: {'samples': [...], 'estimate': ..., 'faces': [...]}."""
        out, stem = self.new_folder(), Path(Path(src.name).stem)
        files = {"samples": [write_image(out / p, im) for p, im in zip(sample_names(stem, len(result.samples)),
                                                                          result.samples)],
                 "estimate": write_image(out / "estimates" / f"{stem}.png", result.estimate) if aligned else None,
                 "faces": []}
        for k, face in enumerate(result.faces):
            files["faces"].append((write_image(out / "cropped_faces" / f"{stem}_{k:02d}.png", face.crop),
                                   f"face {k:02d}: input"))
            files["faces"] += [(write_image(out / "restored_faces" / p, im), f"face {k:02d}: restored")
                               for p, im in zip(sample_names(stem, len(face.restored), f"_{k:02d}"), face.restored)]
        return files

    def outputs(self, src: Path, files: dict, result, aligned: bool, show_estimate: bool, seconds: float,
                evals: str):
        restored = [str(p) for p in files["samples"]]
        h, w = result.image.shape[:2]
        before = Image.fromarray(result.input)
        if before.size != (w, h):  # whole photo: the input enlarged like the background
            before = before.resize((w, h), Image.LANCZOS)
        samples = [(p, f"sample {k}") for k, p in enumerate(restored)]
        faces = [(str(p), label) for p, label in files["faces"]]
        estimate = str(files["estimate"]) if aligned and show_estimate and files["estimate"] else None
        if aligned:
            what = f"{w}x{h} face"
        else:
            found, kept = len(result.photo.faces), len(result.photo.kept)
            what = f"{found} face(s) restored" + ("" if found or kept else ": the photo is only upscaled")
            if kept:
                what += (f"; {kept} face(s) larger than the model's {self.cfg.image_size} px left as they were "
                         "(tick 'restore large faces too' to restore them at the model's size)")
        note = (f"{what}; {evals} per face and sample; {seconds:.1f} s"
                + ("" if estimate or not show_estimate else "; the estimator output is shown for aligned faces"))
        return ((np.asarray(before), restored[0]), samples, gr.update(value=estimate, visible=estimate is not None),
                restored[0], gr.update(value=faces, visible=not aligned), note)


def build_app(restorer: Handler) -> gr.Blocks:
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
                auto_start = gr.Checkbox(label="start step per face (auto)",
                                         value=bool(cfg.sampling.auto_start), visible=cfg.sampling.auto.weights is not None,
                                         elem_id="auto-start")
                steps = gr.Slider(0, MAX_STEPS, value=cfg.sampling.steps or 0, step=1,
                                  label="steps (0 = the config's grid)", elem_id="steps")
                sampler = gr.Dropdown(sorted(SAMPLERS), value=cfg.sampling.sampler, label="sampler")
                num_samples = gr.Slider(1, MAX_SAMPLES, value=1, step=1, label="samples (different noise)",
                                        elem_id="num-samples")
                seed = gr.Number(value=cfg.seed, precision=0, label="seed")
                upscale = gr.Slider(1, MAX_UPSCALE, value=DEFAULT_UPSCALE, step=1, label="upscale (whole photos)")
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
                                allow_downscale, auto_start],
                     [compare, gallery, estimate, download, faces, note])
    return demo


def main(argv=None) -> int:
    opts = parse_args(argv)
    try:
        restorer = Handler(opts)
    except (ConfigError, WeightsError, ImportError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # SIGTERM (a service manager, `kill`) ends the app like Ctrl-C, so that the results folder is removed
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    demo = build_app(restorer)
    demo.queue(max_size=opts.queue_size, default_concurrency_limit=opts.concurrency, api_open=False)
    font = ["ui-sans-serif", "system-ui", "sans-serif"]  # no web fonts: the page works offline
    demo.launch(server_name=opts.host, server_port=opts.port, max_file_size=int(opts.max_file_mb * 1e6),
                show_error=False, theme=gr.themes.Default(font=font, font_mono=["ui-monospace", "monospace"]),
                footer_links=[])
    return 0


if __name__ == "__main__":
    sys.exit(main())
