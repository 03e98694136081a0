"""Weight files: load any released or own file safely, save ours, find or download released ones.

Loading never unpickles code: ``.safetensors`` files go through safetensors, everything else
through ``torch.load(..., weights_only=True)``. A file may hold a raw state_dict or wrap it in
``{'params_ema' | 'params' | 'state_dict' | 'model': ...}`` (tried in that order, one or two
levels deep); ``'model'`` is accepted for other projects' checkpoints that use it. ``module.``
(DDP) prefixes are stripped or added to match the model. Every problem with a file raises
:class:`WeightsError` naming the file, the reason, and for downloads the URL and where to put
the file by hand.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import re
import tempfile
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch
from tqdm import tqdm

CONTAINER_KEYS = ("params_ema", "params", "state_dict", "model")
DDP_PREFIX = "module."
LIST_LIMIT = 10  # key names shown per category in a mismatch error


class WeightsError(Exception):
    """A weight file is missing, unreadable, unsafe, mismatched or could not be downloaded."""


# --------------------------------------------------------------------------- loading files

def load_state_dict_file(path: str | os.PathLike, keys: tuple[str, ...] = CONTAINER_KEYS) -> dict[str, torch.Tensor]:
    """Read a weight file into a CPU state dict without executing any pickled code.

    Args:
        path: a ``.safetensors`` file or a ``torch.save`` file (zip or legacy pickle).
        keys: container keys tried in order when the file wraps its state dict
            (e.g. ``('ema',)`` to pick the EMA weights of one of our training checkpoints).
    Returns:
        ``{name: tensor}`` on CPU.
    Raises:
        WeightsError: missing / empty / truncated / not a weight file / unsafe pickle / no tensors.
    """
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"weight file not found: {path}")
    if not path.is_file():
        raise WeightsError(f"weight file {path} is not a regular file")
    if path.stat().st_size == 0:
        raise WeightsError(f"weight file {path} is empty (0 bytes); a download or copy probably failed")
    obj = _read_safetensors(path) if path.suffix == ".safetensors" else _read_torch(path)
    return _unwrap(obj, path, keys)


def _read_safetensors(path: Path) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # SafetensorError is not exported under a stable name
        raise WeightsError(f"weight file {path} is not a valid safetensors file "
                           f"(truncated or corrupt): {e}") from e


def _read_torch(path: Path) -> object:
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before failing clearly
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, OSError, RuntimeError, KeyError, EOFError...
        raise WeightsError(f"weight file {path} {_diagnose(path, e)} ({_short(e)})") from e


def _diagnose(path: Path, error: Exception) -> str:
    """Say why ``path`` could not be read, from the loader's error and the file's first bytes."""
    unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
    if unsafe:
        return (f"contains pickled Python objects ({unsafe[1]}) that are not loaded for safety; only "
                f"tensors and plain containers are allowed. Convert it to a plain state_dict or "
                f".safetensors file in a trusted environment")
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK\x03\x04"):
        return "is a truncated or corrupt PyTorch zip archive"
    if head[:1] == b"\x80" and "weights only load failed" in str(error).lower():
        return "is a pickle that the safe loader cannot read; it is not loaded for safety"
    if head[:1] == b"\x80":
        return "is a truncated or corrupt pickle"
    return "is not a weight file (neither a PyTorch zip archive nor a pickle)"


def _short(error: Exception, limit: int = 200) -> str:
    """One line of ``error``: torch's weights-only errors are paragraphs; keep the reason only."""
    text = str(error)
    if "WeightsUnpickler error:" in text:  # drop torch's advice on how to load it unsafely
        text = text.split("WeightsUnpickler error:")[1]
        text = re.split(r"Please use|Check the documentation", text)[0]
    line = " ".join(text.split()) or "no message"
    return f"{type(error).__name__}: {line[:limit]}"


def _is_state_dict(obj: object) -> bool:
    return (isinstance(obj, Mapping) and len(obj) > 0
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()))


def _unwrap(obj: object, path: Path, keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Find the state dict in ``obj``: the object itself or under a container key, 2 levels deep."""
    for _ in range(3):
        if _is_state_dict(obj):
            return dict(obj)
        key = next((k for k in keys if isinstance(obj, Mapping) and k in obj), None)
        if key is None:
            break
        obj = obj[key]
    if isinstance(obj, Mapping):
        shown = _names(obj.keys())
        raise WeightsError(f"weight file {path} holds no state dict: expected {{name: tensor}} or one "
                           f"under {list(keys)}; found keys: {shown}")
    raise WeightsError(f"weight file {path} holds a {type(obj).__name__}, not a state dict")


# --------------------------------------------------------------------------- loading into models

def load_weights(model: torch.nn.Module, source: str | os.PathLike | Mapping[str, torch.Tensor],
                 strict: bool = True, keys: tuple[str, ...] = CONTAINER_KEYS) -> torch.nn.Module:
    """Load a weight file or state dict into ``model`` in place and return the model.

    ``module.`` prefixes are stripped or added, choosing the variant that matches most of the
    model's keys. Tensors are copied onto each parameter's own device and dtype.

    Raises:
        WeightsError: listing missing, unexpected (only if ``strict``) and mis-shaped keys.
    """
    where = "state dict" if isinstance(source, Mapping) else f"weight file {source}"
    state = dict(source) if isinstance(source, Mapping) else load_state_dict_file(source, keys)
    own = model.state_dict()
    state = match_prefix(state, own.keys())
    problems = _mismatches(state, own, strict)
    if problems:
        raise WeightsError(f"{where} does not fit {type(model).__name__}:\n" + "\n".join(problems))
    model.load_state_dict(state, strict=strict)
    return model


def match_prefix(state: Mapping[str, torch.Tensor], model_keys) -> dict[str, torch.Tensor]:
    """Return ``state`` as is, with ``module.`` stripped, or with it added: whichever shares most keys."""
    model_keys = set(model_keys)
    stripped = {k[len(DDP_PREFIX):] if k.startswith(DDP_PREFIX) else k: v for k, v in state.items()}
    added = {DDP_PREFIX + k: v for k, v in state.items()}
    candidates = [dict(state), stripped, added]  # ties keep the earlier (unchanged) variant
    return max(candidates, key=lambda c: len(model_keys & c.keys()))


def _mismatches(state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor], strict: bool) -> list[str]:
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shaped = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    lines = [f"  mis-shaped keys ({len(shaped)}): {_names(shaped)}"] if shaped else []
    if strict and missing:
        lines.append(f"  missing keys ({len(missing)}): {_names(missing)}")
    if strict and unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): {_names(unexpected)}")
    return lines


def _names(items, limit: int = LIST_LIMIT) -> str:
    items = [str(i) for i in items]
    more = f", ... and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


# --------------------------------------------------------------------------- saving

def save_safetensors(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike,
                     metadata: dict[str, str] | None = None) -> Path:
    """Write ``state_dict`` to ``path`` as safetensors, atomically (temp file, then rename).

    Tensors are moved to CPU and made contiguous; ones sharing storage with an earlier
    tensor are cloned (safetensors refuses shared memory). Returns the path.
    """
    from safetensors.torch import save_file

    if metadata is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise ValueError(f"safetensors metadata must map str to str, got {metadata!r}")
    tensors, seen = {}, set()
    for name, t in state_dict.items():
        t = t.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        tensors[name] = t.clone() if ptr in seen and t.numel() else t
        seen.add(ptr)
    return _atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def save_checkpoint(obj: object, path: str | os.PathLike) -> Path:
    """``torch.save`` ``obj`` to ``path`` atomically. Keep ``obj`` to tensors and plain containers
    so that :func:`load_state_dict_file` / ``torch.load(weights_only=True)`` can read it back."""
    return _atomic_write(Path(path), lambda tmp: torch.save(obj, tmp))


def _atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temp file beside ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide the file from other users
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


# --------------------------------------------------------------------------- registry

DIFFACE_LICENCE = "S-Lab License 1.0 (non-commercial), github.com/zsyOAOA/DifFace"
REALESRGAN_LICENCE = "BSD-3-Clause, github.com/xinntao/Real-ESRGAN"
_DIFFACE_URL = "https://github.com/zsyOAOA/DifFace/releases/download/V1.0/"
_ESRGAN_URL = "https://github.com/xinntao/Real-ESRGAN/releases/download/"


@dataclass(frozen=True)
class WeightSpec:
    """A released weight file: where it comes from and where it lives under the weights folder."""
    name: str
    url: str
    subdir: str
    filename: str
    description: str
    licence: str
    sha256: str | None = None  # none published upstream (docs/method.md#weights)
    keys: tuple[str, ...] = CONTAINER_KEYS  # container keys tried when loading
    size_mib: int | None = None  # approximate download size, for messages

    def path(self, weights_dir: str | os.PathLike | None = None) -> Path:
        """``<weights_dir>/<subdir>/<filename>``; ``weights_dir`` defaults to :func:`default_weights_dir`."""
        return Path(weights_dir if weights_dir is not None else default_weights_dir()) / self.subdir / self.filename


def _difface(name: str, subdir: str, description: str, size_mib: int) -> WeightSpec:
    return WeightSpec(name, _DIFFACE_URL + name + ".pth", subdir, name + ".pth", description, DIFFACE_LICENCE,
                      size_mib=size_mib)


def _esrgan(name: str, release: str, description: str) -> WeightSpec:
    return WeightSpec(name, f"{_ESRGAN_URL}{release}/{name}.pth", "realesrgan", name + ".pth",
                      description, REALESRGAN_LICENCE, keys=("params_ema", "params"), size_mib=64)


# Sizes: fp32 payloads computed from the official key lists (docs/method.md#weights), rounded.
REGISTRY: dict[str, WeightSpec] = {s.name: s for s in (
    _difface("swinir_restoration512_L1", "estimator", "SwinIR diffused estimator for 512x512 faces, L1-trained", 86),
    _difface("iddpm_ffhq512_ema500000", "diffusion", "improved-DDPM UNet prior, FFHQ 512x512, EMA at 500k iterations",
             610),
    _difface("lama_inpainting256", "estimator", "LaMa inpainting estimator for 256x256 faces", 195),
    _difface("iddpm_ffhq256_ema750000", "diffusion", "improved-DDPM UNet prior, FFHQ 256x256, EMA at 750k iterations",
             473),
    _esrgan("RealESRGAN_x2plus", "v0.2.1", "Real-ESRGAN x2 background upsampler (whole-image mode)"),
    _esrgan("RealESRGAN_x4plus", "v0.1.0", "Real-ESRGAN x4 background upsampler"),
)}

# Folders searched after the weights folder, so that files placed there earlier are still found.
REPO_WEIGHTS = Path(__file__).resolve().parents[1] / "weights"


def get_spec(name: str) -> WeightSpec:
    """The registry entry for ``name``; an unknown name raises with the known ones."""
    if name not in REGISTRY:
        raise WeightsError(f"unknown weight name {name!r}; known names: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def default_weights_dir() -> Path:
    """Where downloads go: ``$DIFFACE_WEIGHTS``, else ``$XDG_CACHE_HOME/difface``, else
    ``~/.cache/difface``; independent of the working directory."""
    if os.environ.get("DIFFACE_WEIGHTS"):
        return Path(os.environ["DIFFACE_WEIGHTS"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "difface"


def find_weights(spec: WeightSpec, weights_dir: str | os.PathLike | None = None) -> Path | None:
    """The file of ``spec`` under the weights folder, the repository's ``weights/`` or ``./weights``."""
    for root in (Path(weights_dir).expanduser() if weights_dir is not None else default_weights_dir(),
                 REPO_WEIGHTS, Path("weights")):
        if spec.path(root).is_file():
            return spec.path(root).absolute()
    return None


def spec_url(spec: WeightSpec) -> str:
    """The URL to fetch ``spec`` from: ``$DIFFACE_WEIGHTS_URL_BASE/<filename>`` (a mirror) or its own."""
    base = os.environ.get("DIFFACE_WEIGHTS_URL_BASE")
    return f"{base.rstrip('/')}/{spec.filename}" if base else spec.url


def describe_missing(specs: list[WeightSpec], weights_dir: str | os.PathLike | None = None) -> str:
    """One block per missing file: name, size, URL and the path it belongs at."""
    lines = []
    for spec in specs:
        size = f" (about {spec.size_mib} MiB)" if spec.size_mib else ""
        lines += [f"  {spec.filename}{size}, {spec.description}",
                  f"      from {spec_url(spec)}",
                  f"      to   {spec.path(weights_dir).absolute()}"]
    return "\n".join(lines)


# --------------------------------------------------------------------------- resolving / downloading

def resolve_weights(name_or_path: str | os.PathLike, weights_dir: str | os.PathLike | None = None,
                    download: bool = True, verify: Callable[[Path], None] | None = None,
                    url: str | None = None, timeout: float = 30.0) -> Path:
    """Find a weight file: an existing path as is, or a registry name (see :func:`find_weights`).

    A missing registry file is downloaded (if ``download``) into ``weights_dir`` (default
    :func:`default_weights_dir`) from ``url``, else ``$DIFFACE_WEIGHTS_URL_BASE/<filename>``,
    else the registry URL; then ``verify(path)`` is called (e.g. a strict load) and, if it
    raises, our download is deleted.

    Raises:
        WeightsError: unknown name / missing file / download or verification failure, saying
            where to put the file by hand.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    if str(name_or_path) not in REGISTRY:
        raise WeightsError(f"{str(name_or_path)!r} is neither an existing file nor a known weight name; "
                           f"known names: {', '.join(REGISTRY)}")
    spec = REGISTRY[str(name_or_path)]
    found = find_weights(spec, weights_dir)
    if found is not None:
        return found
    target = spec.path(weights_dir).absolute()
    url = url or spec_url(spec)
    if not download:
        raise WeightsError(f"weight file {spec.filename} not found at {target} and downloading is off. "
                           + _by_hand(url, target))
    _download(url, target, spec.sha256, timeout)
    if verify is not None:
        _verify(verify, target, url)
    return target


def _by_hand(url: str, target: Path) -> str:
    return (f"Download {url} by hand and put it at {target} (or set DIFFACE_WEIGHTS to the folder "
            f"holding {target.parent.name}/, or pass the file's path).")


def _download(url: str, target: Path, sha256: str | None, timeout: float) -> None:
    """Stream ``url`` to ``<target>.part`` with a progress bar, check it, rename it to ``target``."""
    part = target.with_name(target.name + ".part")
    created = [p for p in (target.parent, *target.parent.parents) if not p.exists()]
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        request = urllib.request.Request(url, headers={"User-Agent": "difface-reference"})
        with urllib.request.urlopen(request, timeout=timeout) as response, open(part, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            digest = _stream(response, out, total, target.name)
        size = part.stat().st_size
        if total is not None and size != total:
            raise _Failure(f"the download was cut short ({size} of {total} bytes)")
        if sha256 and digest != sha256.lower():
            raise _Failure(f"checksum mismatch (sha256 {digest}, expected {sha256})")
        os.replace(part, target)
    except (_Failure, OSError, ValueError, http.client.HTTPException) as e:  # URLError is an OSError
        part.unlink(missing_ok=True)
        _remove_empty(created)
        raise WeightsError(f"could not download {target.name} from {url}: {_reason(e)}. "
                           + _by_hand(url, target)) from e
    finally:
        part.unlink(missing_ok=True)


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders a failed download created (innermost first), if they are still empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


class _Failure(Exception):
    """Internal: a download arrived but is wrong."""


def _stream(response, out, total: int | None, desc: str, chunk: int = 1 << 20) -> str:
    """Copy ``response`` to ``out`` in chunks with a tqdm bar in bytes; return the sha256 hex digest."""
    digest = hashlib.sha256()
    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, disable=None) as bar:
        while block := response.read(chunk):
            out.write(block)
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()


def _reason(e: BaseException) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        return f"network error ({e.reason}); is there an internet connection?"
    return f"{type(e).__name__}: {e}" if not isinstance(e, _Failure) else str(e)


def _verify(verify: Callable[[Path], None], target: Path, url: str) -> None:
    """Run ``verify(target)``; on failure delete the file we just downloaded and raise."""
    try:
        verify(target)
    except Exception as e:
        target.unlink(missing_ok=True)
        _remove_empty([target.parent])
        raise WeightsError(f"downloaded {target.name} from {url} failed verification and was deleted: "
                           f"{e}. " + _by_hand(url, target)) from e
