"""Where the presets and the bundled demo weights are, in a checkout and in an installed wheel.

A checkout (or an editable install) reads them from the repository's `configs/` and `weights/`.
A wheel carries copies under `difface/data/` (see setup.py); a config's relative weight path such
as `weights/demo/prior.safetensors` is resolved against the same root, so presets work from any
folder. No torch here: `--help` lists the presets without it.
"""
from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def data_root() -> Path:
    """The folder holding `configs/` and `weights/`: the repository, else the wheel's copy."""
    repo = PACKAGE_DIR.parent
    if (repo / "configs" / "inference").is_dir():
        return repo
    return PACKAGE_DIR / "data"


def preset_dir() -> Path:
    return data_root() / "configs" / "inference"


def preset_paths() -> list[Path]:
    """The inference presets, sorted by name."""
    return sorted(preset_dir().glob("*.yaml"))


def bundled_file(relative: str | Path) -> Path | None:
    """A file shipped with the project (e.g. `weights/demo/prior.safetensors`), or None."""
    path = data_root() / relative
    return path if path.is_file() else None


def _merge(base: dict, top: dict) -> dict:
    """`top` over `base`: mappings merge key by key, anything else is replaced."""
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_config_file(path: Path, _seen: tuple[Path, ...] = ()) -> dict:
    """A config YAML as a dict, with its `base:` (a preset name, or a YAML path relative to this
    file) read first and this file's keys merged over it. Raises ValueError for a bad file, a
    missing base or a cycle."""
    import yaml
    path = Path(path).resolve()
    if path in _seen:
        raise ValueError(f"config {path} names itself as a base (through {', '.join(p.name for p in _seen)})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"cannot read config {path}: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config {path} is not a mapping of keys")
    base = data.pop("base", None)
    if base is None:
        return data
    candidates = [path.parent / str(base), preset_dir() / f"{base}.yaml"]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise ValueError(f"config {path}: base {base!r} is neither a file next to it nor a preset")
    return _merge(read_config_file(found, _seen + (path,)), data)
