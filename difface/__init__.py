"""DifFace: blind face restoration with diffused error contraction (Yue & Loy, TPAMI 2024).

    import difface
    r = difface.Restorer("difface_ffhq512", device="auto")   # a preset name or a YAML path
    res = r.restore("photo.jpg", seed=12345)                  # a whole photo; aligned=True for a face crop
    res.image                                                 # H x W x 3 uint8 RGB

See `difface.restorer` for the options and `difface.results` for what it returns. Importing the
package is cheap: torch loads with the first use of `Restorer`.
"""
from __future__ import annotations

__version__ = "0.2.0"
__all__ = ["Restorer", "Result", "FaceResult", "InputError", "ConfigError", "DeviceError", "load_config",
           "preset_names"]


def preset_names() -> list[str]:
    """The names of the inference presets (`Restorer(name)`)."""
    from .presets import preset_paths
    return [p.stem for p in preset_paths()]


def __getattr__(name: str):
    if name in ("Restorer", "Result", "FaceResult", "InputError"):
        from . import restorer
        return getattr(restorer, name)
    if name in ("ConfigError", "load_config"):
        from . import pipeline
        return getattr(pipeline, name)
    if name == "DeviceError":
        from models.runtime import DeviceError
        return DeviceError
    raise AttributeError(f"module 'difface' has no attribute {name!r}")
