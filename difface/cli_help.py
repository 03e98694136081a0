"""Argument-parsing helpers of the command-line tools (no torch: `--help` answers at once).

`HelpFormatter` shows defaults only where there is one (no "(default: None)"), `at_least` and
`positive` turn bad numbers into argparse usage errors (exit code 2), and `preset_table` lists
each inference preset's own defaults, read from its YAML.
"""
from __future__ import annotations

import argparse

from .presets import preset_paths, read_config_file


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown where there is one (no '(default: None)'); the epilog keeps its layout."""

    def _get_help_string(self, action):
        if action.default is None or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


def at_least(minimum: int):
    """An argparse type: an integer >= `minimum`."""
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value
    parse.__name__ = f"integer >= {minimum}"
    return parse


def start_step_arg(text: str) -> int | str:
    """An argparse type: 'auto' or an integer >= 0."""
    return "auto" if text.strip().lower() == "auto" else at_least(0)(text)


def positive(text: str) -> float:
    """An argparse type: a number > 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def preset_table() -> str:
    """Each preset's own defaults, read from its YAML (what --start-step etc. default to)."""
    lines = ["presets (--cfg NAME) and their defaults:"]
    for path in preset_paths():
        try:
            cfg = read_config_file(path)
        except ValueError:
            continue
        s = cfg.get("sampling") or {}
        lines.append(f"  {path.stem:<22} {cfg.get('task', 'restoration')}, {cfg.get('image_size', '?')} px, "
                     f"N={s.get('start_step', '?')}, grid {s.get('grid', '?')}, steps {s.get('steps') or 'grid'}, "
                     f"eta {s.get('eta', '?')}, sampler {s.get('sampler', '?')}"
                     + (f", {cfg['dtype']}" if cfg.get("dtype", "fp32") != "fp32" else ""))
    return "\n".join(lines + ["demo is a 64 px demonstration of the pipeline that runs offline, not a restorer."])
