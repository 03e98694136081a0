"""The Python API: a `Restorer` built once from a preset, `restore()` for a face crop or a photo.

    import difface
    r = difface.Restorer("demo", device="cpu")
    res = r.restore("face.png", aligned=True, seed=12345)
    res.image      # H x W x 3 uint8 RGB, the pixels inference.py writes for a file of that name

Every image has its own random stream, derived from (seed, name, sample index), so a result
depends on neither batch size nor order; `name` plays the role the input's relative path plays on
the command line. The command line (`difface.cli`), the web demo and the scripts are front ends
over this module. Per-image problems raise `InputError`, naming the image and the reason.
"""
from __future__ import annotations

import contextlib
import queue
import threading
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from omegaconf import OmegaConf

from datapipe.aligned import ModelFraming
from datapipe.image_io import (ImageReadError, image_size, is_grey, read_image, tensor_to_uint8, to_grey,
                               uint8_to_tensor)
from datapipe.photos import MIN_PHOTO_SIDE, PhotoTooLarge, check_output_size, finish_photo, prepare_photo
from models.difface import DifFace, image_generator, resize_mask
from models.runtime import pick_device, pick_dtype
from models.selection import faithful_choice

from .pipeline import (SELECT_RULES, ConfigError, InferenceConfig, build_networks, load_config, make_difface,
                       outputs_per_input, validate)
from .results import AlignedInput, FaceResult, PhotoInput, Result

MIN_FACE_SIDE = 32  # smaller aligned inputs cannot hold a face worth restoring
MAX_ASPECT = 1.25  # an aligned crop is square; up to 5:4 is taken (and resized), beyond is a photo
DEFAULT_MAX_PIXELS = 40_000_000

Progress = Callable[[int, int], None]  # (evaluations done, evaluations per chain)


class InputError(ValueError):
    """An input image (or its mask) cannot be restored; the message names it and says why."""


def _as_tensor(image, name: str, max_pixels: float | None) -> torch.Tensor:
    """A path, an H x W x 3 uint8 RGB array or a (3, H, W) [0, 1] tensor -> (3, H, W) float32 RGB."""
    if isinstance(image, (str, Path)):
        try:
            return read_image(image, max_pixels=max_pixels)
        except ImageReadError as e:
            raise InputError(str(e)) from None
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise InputError(f"{name}: expected an H x W x 3 uint8 RGB array, got {image.dtype} {image.shape}")
        return uint8_to_tensor(image)
    if isinstance(image, torch.Tensor) and image.ndim == 3 and image.shape[0] == 3:
        return image.float()
    raise InputError(f"{name}: expected an image path, an H x W x 3 uint8 array or a (3, H, W) tensor, "
                     f"got {type(image).__name__}")


def _default_name(image) -> str:
    return Path(image).name if isinstance(image, (str, Path)) else "image"


def final_image(image: torch.Tensor | np.ndarray, grey: bool, rows: int = 256) -> np.ndarray:
    """An output image as it is written: uint8 RGB, made grey for a grey input (a large array
    `rows` at a time, so that a big photo needs no float copy of itself)."""
    if not grey:
        return image if isinstance(image, np.ndarray) else tensor_to_uint8(image)
    if not isinstance(image, np.ndarray):
        return tensor_to_uint8(to_grey(image))
    out = np.empty_like(image)
    for top in range(0, image.shape[0], rows):
        out[top:top + rows] = tensor_to_uint8(to_grey(uint8_to_tensor(np.ascontiguousarray(image[top:top + rows]))))
    return out


class Restorer:
    """DifFace built once from a preset (a name under configs/inference/ or a YAML path).

    `device` 'auto' (CUDA, else MPS, else CPU), a name or a torch.device; `dtype` fp32, fp16 or
    bf16 (None: the preset's); `overrides`: `key=value` config overrides, as on the command line.
    Whole-photo settings: `detector` (hog, cnn, retinaface), `det_threshold`, `min_face_size`,
    `bg_upsampler` (lanczos, realesrgan), `bg_weights`, `bg_tile`. Limits: `max_pixels` for an input
    image, `max_output_pixels` for a restored photo (both checked from the header, before decoding).
    `notes` lists what was changed from what was asked (e.g. a precision without fast kernels on
    this device).
    """

    def __init__(self, cfg: str | InferenceConfig = "difface_ffhq512", device: str | torch.device = "auto",
                 dtype: str | None = None, weights_dir: str | Path | None = None, download: bool = True,
                 overrides: Sequence[str] = (), *, detector: str = "hog", det_threshold: float | None = None,
                 min_face_size: float = 16.0, bg_upsampler: str = "lanczos", bg_weights: str | None = None,
                 bg_tile: int = 400, max_pixels: float = DEFAULT_MAX_PIXELS,
                 max_output_pixels: float = DEFAULT_MAX_PIXELS):
        if OmegaConf.is_config(cfg):  # an already loaded config (the command line's)
            self.cfg = cfg
        else:
            extra = [f"device={device}"] if isinstance(device, str) else []
            self.cfg = load_config(str(cfg), list(overrides) + extra)
        if not isinstance(device, torch.device):
            device = pick_device(str(device))
        self.device = device
        self.dtype, note = pick_dtype(dtype or self.cfg.dtype, self.device)
        self.notes = [note] if note else []
        self.weights_dir, self.download = weights_dir, download
        self.max_pixels, self.max_output_pixels = max_pixels, max_output_pixels
        self.estimator, self.prior = build_networks(self.cfg, self.device, weights_dir, download)
        self.method = make_difface(self.cfg, self.estimator, self.prior, self.dtype)
        self.framing = ModelFraming.of(self.cfg.image_size, self.cfg.face.template, self.cfg.face.template_size,
                                       self.cfg.face.border_value, reframe=self.cfg.task != "inpainting")
        self.photo_settings = dict(detector=detector, det_threshold=det_threshold, min_face_size=min_face_size,
                                   bg_upsampler=bg_upsampler, bg_weights=bg_weights, bg_tile=bg_tile)
        self._idle_detectors: queue.SimpleQueue = queue.SimpleQueue()
        self._backgrounds: dict[str, Callable] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ settings

    def describe(self) -> str:
        """One line: model, device, precision and sampling settings."""
        cfg = self.cfg
        if self.dtype != "fp32" and cfg.low_precision_from_step is not None:
            precision = f"{self.dtype} for the prior at t >= {cfg.low_precision_from_step}, else fp32"
        else:
            precision = self.dtype
        n = "auto (per face)" if cfg.sampling.auto_start else cfg.sampling.start_step
        return (f"DifFace: model '{cfg.name}' on {self.device} ({precision}); N={n}, "
                f"eta={cfg.sampling.eta}, sampler={cfg.sampling.sampler}")

    def sampling(self, start_step: int | str | None = None, steps: int | None = None, sampler: str | None = None,
                 eta: float | None = None, progress: Progress | None = None) -> DifFace:
        """The method with these sampling settings (None: the preset's) around the built networks.

        `progress(done, total)` is called after every prior evaluation. Invalid settings raise
        ConfigError naming the key.
        """
        changes = {k: v for k, v in dict(start_step=start_step, steps=steps, sampler=sampler, eta=eta).items()
                   if v is not None}
        if start_step is not None:  # 'auto': N per face; a number: that N for every face
            auto = str(start_step).lower() == "auto"
            changes.update(auto_start=auto, start_step=self.cfg.sampling.start_step if auto else start_step)
        cfg = self.cfg
        if changes:
            cfg = OmegaConf.merge(self.cfg, {"sampling": changes})
            validate(cfg)
        if not changes and progress is None:
            return self.method
        method = make_difface(cfg, self.estimator, self.prior, self.dtype)
        method.on_evaluation = progress
        return method

    # ------------------------------------------------------------------ one image

    def restore(self, image, aligned: bool = False, *, seed: int | None = None, name: str | None = None,
                num_samples: int | None = None, select: str | None = None, start_step: int | str | None = None,
                steps: int | None = None, sampler: str | None = None, eta: float | None = None, mask=None,
                mask_style: str = "black", upscale: int = 2, only_center_face: bool = False,
                allow_downscale: bool = False, draw_box: bool = False, progress: Progress | None = None) -> Result:
        """Restore one image: an aligned face crop (`aligned=True`) or a whole photo.

        image: a path, an H x W x 3 uint8 RGB array or a (3, H, W) float tensor in [0, 1].
        name: names the image's random stream (default: the file name, or 'image'); the same name,
        seed and settings give the pixels the command line writes for an input of that relative path.
        mask (inpainting presets): a mask file path or an H x W array (nonzero = hole); None finds the
        holes in the image itself (`mask_style` 'black': exactly black pixels; 'white': scribbles).
        Whole photos: `upscale`, `only_center_face`, `allow_downscale` (restore faces larger than
        1.5x the model size too), `draw_box`. `start_step='auto'`: N chosen for each face by the preset's
        start-step head (the result's `info['start_step']`, or each face's `start_step`). `select='fidelity'` with
        num_samples > 1: only the sample whose coarse content is nearest the estimate is returned
        (which one: `info['kept_sample']`, or each face's `kept_sample`).
        """
        name = name or _default_name(image)
        method = self.sampling(start_step, steps, sampler, eta, progress)
        seed = self.cfg.seed if seed is None else int(seed)
        num_samples = self.cfg.num_samples if num_samples is None else int(num_samples)
        if num_samples < 1:
            raise ConfigError(f"num_samples must be >= 1, got {num_samples}")
        if select is not None and select not in SELECT_RULES:
            raise ConfigError(f"select must be {' or '.join(SELECT_RULES)}, got {select!r}")
        if aligned:
            item = self.prepare_aligned(image, name, mask, mask_style)
            return self.restore_aligned([item], method, seed, num_samples, select)[0]
        if self.cfg.task == "inpainting":
            raise InputError("inpainting works on aligned faces: pass aligned=True")
        pending = self.prepare_photo(image, name, upscale=upscale, only_center_face=only_center_face,
                                     allow_downscale=allow_downscale, draw_box=draw_box)
        return self.finish_photos([pending], method, seed, num_samples, select)[0]

    # ------------------------------------------------------------------ batches of aligned crops

    def prepare_aligned(self, image, name: str, mask=None, mask_style: str = "black") -> AlignedInput:
        """Read and check an aligned crop (and its mask), and frame it for the model."""
        from datapipe.mask_io import MaskError, check_mask, detect_black_holes, detect_white_scribbles, read_mask
        img = _as_tensor(image, name, self.max_pixels)
        h, w = img.shape[-2:]
        item = AlignedInput(name, img, is_grey(img), info={"size": [w, h], "grey": is_grey(img)})
        if min(h, w) < MIN_FACE_SIDE:
            raise InputError(f"{name}: image is {w}x{h}, too small to be a face "
                             f"(at least {MIN_FACE_SIDE}x{MIN_FACE_SIDE})")
        if max(h, w) > MAX_ASPECT * min(h, w):
            raise InputError(f"{name}: a face crop is square; this image is {w}x{h} (drop --aligned / "
                             f"aligned=False for photos)")
        if self.cfg.task == "inpainting":
            try:
                if isinstance(mask, (str, Path)):
                    item.mask = read_mask(mask)
                elif mask is not None:
                    item.mask = torch.as_tensor(np.asarray(mask) > 0, dtype=torch.float32)[None]
                elif mask_style == "white":
                    item.mask = detect_white_scribbles(img)
                else:
                    item.mask = detect_black_holes(img)
                item.info["hole_fraction"] = round(check_mask(item.mask, img.shape, name), 4)
            except (MaskError, ImageReadError) as e:
                raise InputError(str(e)) from None
        item.model_input, item.affine = self.framing.to_model(img)
        return item

    def restore_aligned(self, items: Sequence[AlignedInput], method: DifFace | None = None,
                        seed: int | None = None, num_samples: int | None = None,
                        select: str | None = None) -> list[Result]:
        """Restore prepared aligned crops together (in batches of the config's batch_size)."""
        method = method or self.method
        seed = self.cfg.seed if seed is None else seed
        num_samples = self.cfg.num_samples if num_samples is None else num_samples
        select = self.cfg.select if select is None else select
        size = (self.cfg.image_size,) * 2
        masks = None
        if self.cfg.task == "inpainting":
            masks = torch.stack([resize_mask(it.mask[None], size)[0] for it in items])
        samples, estimates, notes = self.restore_crops(method, torch.stack([it.model_input for it in items]),
                                                       [it.name for it in items], seed, num_samples, masks,
                                                       select=select)
        results = []
        for n, it in enumerate(items):
            outs = [self.framing.from_model(s[n], it.image, it.affine, it.mask) for s in samples]
            estimate = self.framing.from_model(estimates[n], it.image, it.affine)
            info = {**it.info, **notes[n]}
            results.append(Result(samples=[final_image(o, it.grey) for o in outs], name=it.name,
                                  input=final_image(it.image, it.grey), estimate=final_image(estimate, it.grey),
                                  info=info))
        return results

    def restore_crops(self, method: DifFace, crops: torch.Tensor, keys: Sequence[str], seed: int,
                      num_samples: int, masks: torch.Tensor | None = None, given: torch.Tensor | None = None,
                      select: str = "all"):
        """Restore (N, 3, S, S) model-size crops in batches; one generator per (seed, key, sample).

        The estimate f(y) is computed once per face (or taken from `given`, (N, 3, S, S): e.g. a
        video track's estimates averaged over frames); the samples of a batch run together (a batch
        of batch_size x num_samples chains), each from its own generator, so the result equals
        sample-by-sample restoration. masks: (N, 1, S, S), 1 = hole, for inpainting.
        select 'fidelity' (with num_samples > 1): only each face's sample nearest its estimate in
        coarse content is returned (models/selection.py).
        Returns ([samples] each (N, 3, S, S) on the CPU, estimates (N, 3, S, S), a dict per face:
        its `start_step` with `start_step: auto`, the `kept_sample` with select 'fidelity').
        """
        batch_size, device = self.cfg.batch_size, self.device
        choose = select == "fidelity" and num_samples > 1
        samples = [[] for _ in range(1 if choose else num_samples)]
        estimates, notes = [], []

        def repeat(t):  # sample-major: row k * n + j is sample k of face j
            return None if t is None else t.repeat(num_samples, *[1] * (t.dim() - 1))

        for i in range(0, len(crops), batch_size):
            y = crops[i:i + batch_size].to(device)
            mask = masks[i:i + batch_size].to(device) if masks is not None else None
            batch_keys, n = keys[i:i + batch_size], len(y)
            estimate = method.estimate_input(y, mask) if given is None else given[i:i + batch_size].to(device)
            generators = [image_generator(seed, key, k) for k in range(num_samples) for key in batch_keys]
            result = method.restore(repeat(y), generator=generators, mask=repeat(mask), estimate=repeat(estimate))
            batch_notes = [{} for _ in range(n)]
            if result.start_steps is not None:
                for note, step in zip(batch_notes, result.start_steps[:n]):
                    note["start_step"] = step
            per_sample = result.sample.unflatten(0, (num_samples, n))
            if choose:
                kept = faithful_choice(per_sample, result.estimate[:n])
                samples[0].append(per_sample[kept, torch.arange(n, device=kept.device)].cpu())
                for note, k in zip(batch_notes, kept.tolist()):
                    note["kept_sample"] = k
            else:
                for k in range(num_samples):
                    samples[k].append(per_sample[k].cpu())
            estimates.append(result.estimate[:n].cpu())
            notes += batch_notes
        return [torch.cat(s) for s in samples], torch.cat(estimates), notes

    # ------------------------------------------------------------------ whole photos

    @contextlib.contextmanager
    def face_detector(self):
        """A face detector of this Restorer's settings for the block: an idle one, else a new one.

        Loading dlib's models takes about 0.7 s and 120 MB, and a detector must not be used by two
        threads at once: the pool holds as many as ever ran at the same time (the web demo's
        concurrency), however many threads take turns.
        """
        from datapipe.faces import FaceDetector
        try:
            detector = self._idle_detectors.get_nowait()
        except queue.Empty:
            s = self.photo_settings
            detector = FaceDetector(s["detector"], score_threshold=s["det_threshold"], min_face_size=s["min_face_size"])
        try:
            yield detector
        finally:
            self._idle_detectors.put(detector)

    def background(self, upscale: int) -> Callable[[np.ndarray, int], np.ndarray]:
        """`img, scale -> img` for the whole photo: Lanczos, or Real-ESRGAN (tiled), built once."""
        from datapipe.photos import lanczos_background
        s = self.photo_settings
        if s["bg_upsampler"] == "lanczos":
            return lanczos_background
        name = s["bg_weights"] or ("RealESRGAN_x4plus" if upscale > 2 else "RealESRGAN_x2plus")
        with self._lock:
            if name not in self._backgrounds:
                self._backgrounds[name] = self._realesrgan(name)
            return self._backgrounds[name]

    def _realesrgan(self, name: str):
        from datapipe.photos import upscale_lanczos
        from models.checkpoint import load_weights, resolve_weights
        from models.rrdbnet import realesrgan, upscale_tiled
        net_scale = 4 if "x4" in Path(name).name else 2
        net = realesrgan(net_scale)
        load_weights(net, resolve_weights(name, self.weights_dir, download=self.download))
        net = net.eval().requires_grad_(False).to(self.device)
        tile, device = self.photo_settings["bg_tile"], self.device

        def upsample(img, scale):
            up = upscale_tiled(net, uint8_to_tensor(img)[None].to(device), net_scale, tile=tile)[0]
            out = tensor_to_uint8(up.cpu())
            h, w = img.shape[:2]
            return out if out.shape[:2] == (h * scale, w * scale) else upscale_lanczos(out, (h * scale) / out.shape[0])

        return upsample

    def prepare_photo(self, image, name: str, *, upscale: int = 2, only_center_face: bool = False,
                      allow_downscale: bool = False, draw_box: bool = False) -> "PhotoInput":
        """Read a photo, detect and align its faces and upscale its background (no network yet)."""
        size = image_size(image) if isinstance(image, (str, Path)) else None
        if size is not None and size[0] * size[1] <= self.max_pixels:  # larger: read_image says so
            self._check_photo_size(name, *size, upscale)  # from the header: refused before decoding
        img = _as_tensor(image, name, self.max_pixels)
        h, w = img.shape[-2:]
        self._check_photo_size(name, w, h, upscale)
        grey = is_grey(img)
        photo = tensor_to_uint8(img)
        cfg = self.cfg
        try:
            with self.face_detector() as detector:
                pending = prepare_photo(photo, detector, name, face_size=cfg.image_size,
                                        template=np.asarray(cfg.face.template, dtype=np.float32),
                                        template_size=cfg.face.template_size, border_value=list(cfg.face.border_value),
                                        upscale=upscale, background_fn=self.background(upscale), draw_box=draw_box,
                                        max_pixels=int(self.max_pixels), allow_downscale=allow_downscale,
                                        only_center_face=only_center_face)
        except PhotoTooLarge as e:
            raise InputError(f"{name}: {e}") from None
        return PhotoInput(name, photo, grey, pending, {"size": [w, h], "grey": grey})

    def _check_photo_size(self, name: str, w: int, h: int, upscale: int) -> None:
        if min(w, h) < MIN_PHOTO_SIDE:
            raise InputError(f"{name}: image is {w}x{h}, too small to hold a face (at least "
                             f"{MIN_PHOTO_SIDE}x{MIN_PHOTO_SIDE})")
        try:
            check_output_size(w, h, upscale, self.max_output_pixels)
        except PhotoTooLarge as e:
            raise InputError(f"{name}: {e}") from None

    def finish_photos(self, photos: Sequence["PhotoInput"], method: DifFace | None = None,
                      seed: int | None = None, num_samples: int | None = None,
                      select: str | None = None) -> list[Result]:
        """Restore the faces of prepared photos together and paste them back, one Result per photo."""
        method = method or self.method
        seed = self.cfg.seed if seed is None else seed
        num_samples = self.cfg.num_samples if num_samples is None else num_samples
        select = self.cfg.select if select is None else select
        outputs = outputs_per_input(num_samples, select)
        crops = [p.pending.crops for p in photos if p.pending.num_faces]
        keys = [k for p in photos for k in p.pending.keys]
        samples, _, notes = (self.restore_crops(method, torch.cat(crops), keys, seed, num_samples, select=select)
                             if crops else ([], None, []))
        results, first = [], 0
        for p in photos:
            count = p.pending.num_faces
            photo = finish_photo(p.pending, [s[first:first + count] for s in samples])
            manifest = photo.manifest()
            for d, note in zip(manifest["faces"], notes[first:first + count]):
                d.update(note)
            first += count
            faces = [FaceResult(box=d["box"], landmarks=d["landmarks"], score=d["score"], crop=photo.crops[k],
                                restored=[r[k] for r in photo.restored], start_step=d.get("start_step"),
                                kept_sample=d.get("kept_sample"))
                     for k, d in enumerate(manifest["faces"])]
            images = photo.images if len(photo.images) == outputs else photo.images * outputs  # no face
            results.append(Result(samples=[final_image(im, p.grey) for im in images], name=p.name, input=p.photo,
                                  faces=faces, photo=photo, info={**p.info, **manifest}))
        return results

    def restore_video(self, path, out_path, **options):
        """Restore every face of every frame of a video file into the MP4 `out_path` (audio kept) and
        return a `difface.video.VideoResult`; the options are `difface.video.restore_video`'s."""
        from datapipe.video import VideoError

        from .video import restore_video
        try:
            return restore_video(self, path, out_path, **options)
        except VideoError as e:
            raise InputError(str(e)) from None


def warn_relay(fn, *args, **kwargs):
    """Call `fn`, returning (its result, the messages of the warnings it raised)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn(*args, **kwargs)
    return out, [str(w.message) for w in caught]
