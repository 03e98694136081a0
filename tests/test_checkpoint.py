"""models/checkpoint.py: safe loading, prefix matching, mismatch errors, saving, registry, download.

Downloads only ever go to an http.server on 127.0.0.1; nothing here touches the internet.
"""
import functools
import http.server
import pickle
import socket
import threading
from pathlib import Path

import pytest
import torch
from torch import nn

from models import checkpoint as ck
from models.checkpoint import WeightsError, load_state_dict_file, load_weights, resolve_weights


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.Conv2d(4, 2, 1))


class Wrapper(nn.Module):
    """Same key layout as a DistributedDataParallel-wrapped model: ``module.<name>``."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.module = net


def fresh_copy_equal(src: nn.Module, dst: nn.Module) -> bool:
    return all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))


def other_net() -> nn.Module:
    net = small_net()
    for p in net.parameters():
        nn.init.zeros_(p)
    return net


# --------------------------------------------------------------------------- layouts and prefixes

@pytest.mark.parametrize("wrap", [None, "state_dict", "params_ema", "params", "model"])
def test_layouts_load(tmp_path, wrap):
    src = small_net()
    sd = src.state_dict()
    torch.save(sd if wrap is None else {wrap: sd, "iter": 7}, tmp_path / "w.pth")
    dst = load_weights(other_net(), tmp_path / "w.pth")
    assert fresh_copy_equal(src, dst)


def test_params_ema_preferred_over_params_and_nested(tmp_path):
    src = small_net()
    zeros = {k: torch.zeros_like(v) for k, v in src.state_dict().items()}
    torch.save({"params": zeros, "params_ema": src.state_dict()}, tmp_path / "a.pth")
    assert fresh_copy_equal(src, load_weights(other_net(), tmp_path / "a.pth"))
    torch.save({"state_dict": {"params_ema": src.state_dict()}}, tmp_path / "b.pth")
    assert fresh_copy_equal(src, load_weights(other_net(), tmp_path / "b.pth"))


def test_explicit_container_key(tmp_path):
    src = small_net()
    torch.save({"model": other_net().state_dict(), "ema": src.state_dict()}, tmp_path / "c.pth")
    assert fresh_copy_equal(src, load_weights(other_net(), tmp_path / "c.pth", keys=("ema",)))


def test_module_prefix_stripped_and_added(tmp_path):
    src = small_net()
    torch.save(Wrapper(src).state_dict(), tmp_path / "ddp.pth")
    assert fresh_copy_equal(src, load_weights(other_net(), tmp_path / "ddp.pth"))
    torch.save(src.state_dict(), tmp_path / "plain.pth")
    assert fresh_copy_equal(src, load_weights(Wrapper(other_net()), tmp_path / "plain.pth").module)


def test_prefix_decided_from_all_keys_not_first():
    # The model's first key starts with 'module.' by accident (a submodule named 'module');
    # the file comes from a DDP wrapper around it. A first-key rule would leave the keys alone.
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.module = nn.Linear(2, 2)
            self.head = nn.Linear(2, 1)

    src = Net()
    dst = load_weights(Net(), Wrapper(src).state_dict())
    assert fresh_copy_equal(src, dst)


# --------------------------------------------------------------------------- mismatch errors

def test_strict_mismatch_lists_missing_unexpected_misshaped():
    sd = small_net().state_dict()
    del sd["2.bias"]
    sd["extra.weight"] = torch.zeros(1)
    sd["0.weight"] = torch.zeros(5, 3, 3, 3)
    with pytest.raises(WeightsError) as e:
        load_weights(small_net(), sd)
    msg = str(e.value)
    assert "missing keys (1): 2.bias" in msg
    assert "unexpected keys (1): extra.weight" in msg
    assert "0.weight: file (5, 3, 3, 3) vs model (4, 3, 3, 3)" in msg


def test_non_strict_ignores_names_but_not_shapes():
    src = small_net()
    sd = src.state_dict()
    del sd["2.bias"]
    load_weights(other_net(), sd, strict=False)
    sd["0.weight"] = torch.zeros(5, 3, 3, 3)
    with pytest.raises(WeightsError, match="mis-shaped"):
        load_weights(other_net(), sd, strict=False)


def test_long_key_lists_are_truncated_with_count():
    sd = {f"junk{i}": torch.zeros(1) for i in range(25)}
    sd.update(small_net().state_dict())
    with pytest.raises(WeightsError, match=r"unexpected keys \(25\): .*and 15 more"):
        load_weights(small_net(), sd)


def test_loads_onto_parameter_device_and_dtype(tmp_path):
    src = small_net()
    dst = other_net().to(torch.float64)
    load_weights(dst, src.state_dict())
    assert dst[0].weight.dtype == torch.float64
    assert torch.allclose(dst[0].weight.float(), src[0].weight)


# --------------------------------------------------------------------------- bad files

def test_missing_and_empty_file(tmp_path):
    with pytest.raises(WeightsError, match="not found.*nope.pth"):
        load_state_dict_file(tmp_path / "nope.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(WeightsError, match=r"empty.pth is empty"):
        load_state_dict_file(tmp_path / "empty.pth")


@pytest.mark.parametrize("zipped", [True, False])
def test_truncated_file(tmp_path, zipped):
    full = tmp_path / "full.pth"
    torch.save(small_net().state_dict(), full, _use_new_zipfile_serialization=zipped)
    data = full.read_bytes()
    (tmp_path / "half.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=r"half.pth is a truncated or corrupt"):
        load_state_dict_file(tmp_path / "half.pth")


def test_text_file(tmp_path):
    (tmp_path / "notes.pth").write_text("these are not weights\n")
    with pytest.raises(WeightsError, match=r"notes.pth is not a weight file"):
        load_state_dict_file(tmp_path / "notes.pth")


class Evil:
    """Pickles to a call that creates a marker file when unpickled."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("writer", ["torch", "pickle2", "pickle4"])
def test_malicious_pickle_is_not_executed(tmp_path, writer):
    marker, path = tmp_path / "pwned", tmp_path / "evil.pth"
    payload = {"x": Evil(marker), "weight": torch.zeros(1)}
    if writer == "torch":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=int(writer[-1])))
    reason = "a pickle that the safe loader cannot read" if writer == "pickle4" else \
        r"contains pickled Python objects \(.*open\) that are not loaded for safety"
    with pytest.raises(WeightsError, match=rf"evil.pth (is )?{reason}"):
        load_state_dict_file(path)
    assert not marker.exists()


def test_file_without_state_dict(tmp_path):
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "meta.pth")
    with pytest.raises(WeightsError, match=r"meta.pth holds no state dict.*epoch"):
        load_state_dict_file(tmp_path / "meta.pth")


# --------------------------------------------------------------------------- saving

def test_safetensors_round_trip_with_shared_and_strided_tensors(tmp_path):
    base = torch.arange(12.0).reshape(3, 4)
    sd = {"a": base, "tied": base, "t": base.t(), "half": torch.ones(2, dtype=torch.float16)}
    path = ck.save_safetensors(sd, tmp_path / "sub" / "w.safetensors", metadata={"note": "x"})
    assert sorted(p.name for p in path.parent.iterdir()) == ["w.safetensors"]
    back = load_state_dict_file(path)
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
    assert back["half"].dtype == torch.float16
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"note": "x"}


def test_corrupt_safetensors(tmp_path):
    path = ck.save_safetensors(small_net().state_dict(), tmp_path / "w.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=r"w.safetensors is not a valid safetensors file"):
        load_state_dict_file(path)


def test_save_checkpoint_atomic_and_readable(tmp_path):
    src = small_net()
    ck.save_checkpoint({"ema": src.state_dict(), "step": 5}, tmp_path / "ck.pth")
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pth"]
    assert fresh_copy_equal(src, load_weights(other_net(), tmp_path / "ck.pth", keys=("ema",)))


# --------------------------------------------------------------------------- registry

def test_registry_names_urls_and_layout(tmp_path):
    assert set(ck.REGISTRY) == {"swinir_restoration512_L1", "iddpm_ffhq512_ema500000", "lama_inpainting256",
                                "iddpm_ffhq256_ema750000", "RealESRGAN_x2plus", "RealESRGAN_x4plus"}
    spec = ck.REGISTRY["swinir_restoration512_L1"]
    assert spec.url == "https://github.com/zsyOAOA/DifFace/releases/download/V1.0/swinir_restoration512_L1.pth"
    assert spec.path(tmp_path) == tmp_path / "estimator" / "swinir_restoration512_L1.pth"
    assert ck.REGISTRY["iddpm_ffhq512_ema500000"].subdir == "diffusion"
    assert ck.REGISTRY["RealESRGAN_x4plus"].url == \
        "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.1.0/RealESRGAN_x4plus.pth"
    assert ck.REGISTRY["RealESRGAN_x2plus"].url == \
        "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.2.1/RealESRGAN_x2plus.pth"
    assert ck.REGISTRY["RealESRGAN_x2plus"].subdir == "realesrgan"
    with pytest.raises(WeightsError, match="known names: swinir_restoration512_L1"):
        ck.get_spec("swinir")


def test_default_weights_dir_is_a_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("DIFFACE_WEIGHTS", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert ck.default_weights_dir() == tmp_path / "home" / ".cache" / "difface"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert ck.default_weights_dir() == tmp_path / "xdg" / "difface"
    monkeypatch.setenv("DIFFACE_WEIGHTS", str(tmp_path))
    assert ck.default_weights_dir() == tmp_path
    monkeypatch.chdir(tmp_path / "..")
    assert ck.default_weights_dir() == tmp_path  # independent of the working folder


def test_lookup_order_cache_then_repository_weights(monkeypatch, tmp_path):
    spec = ck.REGISTRY["lama_inpainting256"]
    cache, repo = tmp_path / "cache", tmp_path / "repo_weights"
    monkeypatch.setenv("DIFFACE_WEIGHTS", str(cache))
    monkeypatch.setattr(ck, "REPO_WEIGHTS", repo)
    monkeypatch.chdir(tmp_path)
    assert ck.find_weights(spec) is None
    spec.path(repo).parent.mkdir(parents=True)
    spec.path(repo).write_bytes(b"old")
    assert resolve_weights("lama_inpainting256", download=False) == spec.path(repo)  # files placed earlier
    spec.path(cache).parent.mkdir(parents=True)
    spec.path(cache).write_bytes(b"new")
    assert resolve_weights("lama_inpainting256", download=False) == spec.path(cache)
    assert ck.find_weights(spec, tmp_path / "explicit") == spec.path(repo)  # --weights-dir replaces the cache
    explicit = tmp_path / "explicit"
    spec.path(explicit).parent.mkdir(parents=True)
    spec.path(explicit).write_bytes(b"x")
    assert ck.find_weights(spec, explicit) == spec.path(explicit)


def test_describe_missing_names_size_url_and_target(tmp_path):
    specs = [ck.REGISTRY["swinir_restoration512_L1"], ck.REGISTRY["iddpm_ffhq512_ema500000"]]
    text = ck.describe_missing(specs, tmp_path)
    for spec in specs:
        assert spec.filename in text and spec.url in text and str(spec.path(tmp_path)) in text
    assert "about 86 MiB" in text and "about 610 MiB" in text


# --------------------------------------------------------------------------- resolving / downloading

class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    """Serve ``tmp_path / 'srv'`` on 127.0.0.1; yield (folder, base URL). Proxies are switched off."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    root = tmp_path / "srv"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_existing_path_returned_as_is(tmp_path):
    path = tmp_path / "mine.pth"
    torch.save(small_net().state_dict(), path)
    assert resolve_weights(path, download=False) == path
    with pytest.raises(WeightsError, match="neither an existing file nor a known weight name"):
        resolve_weights(tmp_path / "missing.pth")


def test_download_success(server, tmp_path, monkeypatch):
    root, base = server
    src = small_net()
    torch.save({"params_ema": src.state_dict()}, root / "RealESRGAN_x4plus.pth")
    monkeypatch.setenv("DIFFACE_WEIGHTS_URL_BASE", base)
    seen = []
    wdir = tmp_path / "w"
    path = resolve_weights("RealESRGAN_x4plus", wdir, verify=lambda p: seen.append(load_weights(other_net(), p)))
    assert path == (wdir / "realesrgan" / "RealESRGAN_x4plus.pth").absolute()
    assert path.read_bytes() == (root / "RealESRGAN_x4plus.pth").read_bytes()
    assert [p.name for p in path.parent.iterdir()] == ["RealESRGAN_x4plus.pth"]
    assert len(seen) == 1 and fresh_copy_equal(src, seen[0])
    # second call finds the file and does not download again
    (root / "RealESRGAN_x4plus.pth").unlink()
    assert resolve_weights("RealESRGAN_x4plus", wdir) == path


def test_download_404_leaves_nothing(server, tmp_path):
    _, base = server
    wdir = tmp_path / "w"
    with pytest.raises(WeightsError) as e:
        resolve_weights("lama_inpainting256", wdir, url=f"{base}/missing.pth")
    msg = str(e.value)
    assert "HTTP 404" in msg and f"{base}/missing.pth" in msg
    assert str((wdir / "estimator" / "lama_inpainting256.pth").absolute()) in msg
    assert not any(p.is_file() for p in wdir.rglob("*"))


def test_download_connection_refused(tmp_path, monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    with socket.socket() as s:  # find a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(WeightsError, match=r"could not download lama_inpainting256.pth.*network error") as e:
        resolve_weights("lama_inpainting256", tmp_path, url=f"http://127.0.0.1:{port}/x.pth", timeout=5)
    assert "by hand" in str(e.value)
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_download_disabled(tmp_path):
    with pytest.raises(WeightsError, match=r"not found at .*downloading is off.*by hand") as e:
        resolve_weights("iddpm_ffhq512_ema500000", tmp_path, download=False)
    assert ck.REGISTRY["iddpm_ffhq512_ema500000"].url in str(e.value)


def test_verify_failure_deletes_download(server, tmp_path):
    root, base = server
    (root / "bad.pth").write_text("not weights")
    wdir = tmp_path / "w"
    with pytest.raises(WeightsError, match=r"failed verification and was deleted.*not a weight file"):
        resolve_weights("swinir_restoration512_L1", wdir, url=f"{base}/bad.pth", verify=load_state_dict_file)
    assert not any(p.is_file() for p in wdir.rglob("*"))


def test_checksum_mismatch(server, tmp_path, monkeypatch):
    root, base = server
    (root / "f.pth").write_bytes(b"12345")
    spec = ck.WeightSpec("tiny", f"{base}/f.pth", "x", "tiny.pth", "test", "none", sha256="0" * 64)
    monkeypatch.setitem(ck.REGISTRY, "tiny", spec)
    with pytest.raises(WeightsError, match="checksum mismatch"):
        resolve_weights("tiny", tmp_path / "w")
    assert not any(p.is_file() for p in (tmp_path / "w").rglob("*"))
