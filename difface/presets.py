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
