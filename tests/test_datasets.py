"""Datasets: folders and lists, resizing, skipping corrupt files, reproducible degraded pairs,
paired folders, the resumable sampler, and the data-preparation scripts (tiny inputs)."""
import csv
import importlib.util
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from datapipe.datasets import (DATASETS, BlindPairs, DatasetConfig, HQImages, PairedFolders, ResumableSampler,
                               build_dataset, resize_square)
from datapipe.degradations import BlindDegradationConfig

REPO = Path(__file__).resolve().parents[1]


def _write_faces(folder: Path, n: int, shape=(40, 48), seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        img = cv2.GaussianBlur((rng.random((*shape, 3)) * 255).astype(np.uint8), (7, 7), 2)
        paths.append(folder / f"{i:03d}.png")
        cv2.imwrite(str(paths[-1]), img)
    return paths


@pytest.fixture
def faces(tmp_path) -> Path:
    _write_faces(tmp_path / "faces", 5)
    _write_faces(tmp_path / "faces" / "sub", 2, seed=1)
    return tmp_path / "faces"


SMALL_DEG = BlindDegradationConfig(blur_kernel_size=7, blur_sigma=[0.2, 2.0], downsample_range=[1.0, 4.0],
                                   noise_range=[0.0, 10.0], jpeg_range=[50.0, 100.0], gray_prob=0.2)


def _pairs(root: Path, seed: int = 0, rank: int = 0) -> BlindPairs:
    cfg = DatasetConfig(name="blind_pairs", root=str(root), size=32, degradation=SMALL_DEG)
    return build_dataset(cfg, seed=seed, rank=rank)


def test_folder_recursive_and_file_list(faces, tmp_path):
    assert len(HQImages.from_config(DatasetConfig(name="hq_images", root=str(faces)))) == 7
    assert len(HQImages.from_config(DatasetConfig(name="hq_images", root=str(faces), recursive=False))) == 5
    listing = tmp_path / "list.txt"
    listing.write_text("# two images\nfaces/001.png\n\n" + str(faces / "sub" / "000.png") + "\n")
    ds = HQImages.from_config(DatasetConfig(name="hq_images", file_list=str(listing), size=16))
    assert len(ds) == 2
    sample = ds[0]
    assert sample["hq"].shape == (3, 16, 16) and sample["hq"].dtype == torch.float32
    assert 0.0 <= float(sample["hq"].min()) and float(sample["hq"].max()) <= 1.0


def test_resize_square_shrinks_with_area_and_crops_centre():
    img = np.zeros((40, 60, 3), np.float32)
    img[:, 10:50] = 1.0  # the centre 40x40 is white
    out = resize_square(img, 20)
    assert out.shape == (20, 20, 3) and np.allclose(out, 1.0)
    assert resize_square(img, None) is img


def test_corrupt_file_is_skipped_and_reported_once(faces, caplog):
    (faces / "002.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    ds = HQImages.from_config(DatasetConfig(name="hq_images", root=str(faces), recursive=False, size=32))
    with caplog.at_level(logging.WARNING, logger="datapipe"):
        first, second = ds[2], ds[2]
    assert first["index"] == second["index"] == 3  # the next readable image stands in
    assert sum("002.png" in r.getMessage() for r in caplog.records) == 1


def test_pairs_reproducible_per_key_and_distinct_across_ranks_epochs_indices(faces):
    a, b = _pairs(faces), _pairs(faces)
    lq, hq, params = a.pair((3, 1))
    lq2, hq2, params2 = b.pair((3, 1))
    assert np.array_equal(lq, lq2) and np.array_equal(hq, hq2) and params == params2
    other_rank = _pairs(faces, rank=1).pair((3, 1))[0]
    other_seed = _pairs(faces, seed=5).pair((3, 1))[0]
    other_epoch = a.pair((3, 2))[0]
    other_index = a.pair((4, 1))[0]
    for other in (other_rank, other_seed, other_epoch, other_index):
        assert not np.array_equal(lq, other)
    assert lq.shape == hq.shape == (32, 32, 3)


def test_pairs_do_not_depend_on_the_number_of_workers(faces):
    ds = _pairs(faces)
    batches = []
    for workers in (0, 2):
        sampler = ResumableSampler(ds, 1, 0, shuffle=True, seed=3)
        sampler.set_epoch(1)
        loader = DataLoader(ds, batch_size=2, sampler=sampler, num_workers=workers)
        batches.append(torch.cat([b["lq"] for b in loader]))
    assert torch.equal(batches[0], batches[1])


def test_degradation_params_respect_configured_ranges(faces):
    ds = _pairs(faces)
    draws = [ds.pair((i % len(ds), e))[2] for e in range(6) for i in range(len(ds))]
    for p in draws:
        assert p["kernel_type"] in ("iso", "aniso")
        assert 0.2 <= p["sig_x"] <= 2.0 and 0.2 <= p["sig_y"] <= 2.0
        assert 1.0 <= p["scale"] <= 4.0 and p["lq_size"] == (int(32 // p["scale"]),) * 2
        assert 0.0 <= p["noise_sigma"] <= 10.0 and 50 <= p["jpeg_quality"] <= 100
    assert {p["hflip"] for p in draws} == {True, False}
    assert any(p["gray"] for p in draws)


def test_paired_folders_match_by_stem_and_resize_lq(tmp_path):
    _write_faces(tmp_path / "hq", 3, shape=(32, 32))
    _write_faces(tmp_path / "lq", 3, shape=(16, 16), seed=2)
    ds = PairedFolders(str(tmp_path / "lq"), str(tmp_path / "hq"))
    sample = ds[1]
    assert sample["name"] == "001" and sample["lq"].shape == sample["hq"].shape == (3, 32, 32)
    (tmp_path / "lq" / "extra.png").write_bytes((tmp_path / "lq" / "000.png").read_bytes())
    with pytest.raises(ValueError, match="extra"):
        PairedFolders(str(tmp_path / "lq"), str(tmp_path / "hq"))


def test_max_images_draws_a_seeded_subset_not_the_first_sorted_files(tmp_path):
    _write_faces(tmp_path / "hq", 40, shape=(16, 16))
    _write_faces(tmp_path / "lq", 40, shape=(16, 16), seed=2)
    val = build_dataset(DatasetConfig(name="paired", lq_root=str(tmp_path / "lq"), hq_root=str(tmp_path / "hq"),
                                      max_images=10), seed=10000)
    names = val.names
    assert len(names) == 10 and names == sorted(names)
    assert names != [f"{i:03d}" for i in range(10)] and max(names) > "019"  # spread over the whole set
    again = PairedFolders(str(tmp_path / "lq"), str(tmp_path / "hq"), max_images=10, seed=10000)
    assert again.names == names  # reproducible
    hq = build_dataset(DatasetConfig(name="hq_images", root=str(tmp_path / "hq"), max_images=10), seed=10000)
    assert [p.stem for p in hq.paths] == names


def test_dataset_table_and_config_errors(faces):
    assert set(DATASETS) >= {"hq_images", "blind_pairs", "paired", "random"}
    with pytest.raises(ValueError, match="allowed"):
        build_dataset(DatasetConfig(name="nope", root=str(faces)))
    with pytest.raises(ValueError, match="exactly one"):
        build_dataset(DatasetConfig(name="hq_images"))


def test_resumable_sampler_partitions_ranks_and_resumes_mid_epoch():
    data = list(range(10))
    full = ResumableSampler(data, 2, 0, seed=1)
    full.set_epoch(4)
    keys = list(full)
    assert all(e == 4 for _, e in keys) and len(keys) == 5
    other = ResumableSampler(data, 2, 1, seed=1)
    other.set_epoch(4)
    assert sorted(i for i, _ in keys + list(other)) == data
    full.set_epoch(4, start=3)
    assert list(full) == keys[3:] and len(full) == 2


def _run(script: str, *args: str) -> int:
    """Run a script's main() in this process (saves a Python start-up)."""
    spec = importlib.util.spec_from_file_location(script[:-3], REPO / "scripts" / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(list(args))


def test_make_test_set_writes_pairs_and_manifest(tmp_path, capsys):
    _write_faces(tmp_path / "src", 3, shape=(48, 48))
    assert _run("make_test_set.py", "-i", str(tmp_path / "src"), "-o", str(tmp_path / "out"),
                "--size", "32", "--max-images", "2") == 0
    rows = list(csv.DictReader(open(tmp_path / "out" / "manifest.csv")))
    assert [r["name"] for r in rows] == ["000.png", "001.png"]
    assert rows[0]["sf"] == "4" and rows[0]["qf"] == "30" and rows[1]["theta"] != rows[0]["theta"]
    for sub in ("lq", "hq"):
        assert cv2.imread(str(tmp_path / "out" / sub / "001.png")).shape == (32, 32, 3)
    assert _run("make_test_set.py", "-i", str(tmp_path / "src"), "-o", str(tmp_path / "out")) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_prepare_utkface_splits_last_sorted_files_into_val(tmp_path, capsys):
    src = tmp_path / "utk"
    for i, path in enumerate(_write_faces(src, 4, shape=(50, 50))):
        path.rename(src / f"{i + 20}_0_0_2017{i}.jpg.chip.png")
    (src / "9_0_0_bad.jpg.chip.png").write_bytes(b"broken")
    code = _run("prepare_utkface.py", "-i", str(src), "-o", str(tmp_path / "out"), "--size", "24", "--num-val", "2")
    assert code == 1 and "9_0_0_bad" in capsys.readouterr().err  # reported; the rest is done
    assert sorted(p.name for p in (tmp_path / "out" / "val").iterdir()) == ["23_0_0_20173.png"]
    assert len(list((tmp_path / "out" / "train").iterdir())) == 3
    assert cv2.imread(str(tmp_path / "out" / "train" / "20_0_0_20170.png")).shape == (24, 24, 3)


def test_prepare_ffhq_resizes_and_writes_fixed_split_lists(tmp_path):
    _write_faces(tmp_path / "ffhq" / "00000", 4, shape=(64, 64))
    args = ["-i", str(tmp_path / "ffhq"), "-o", str(tmp_path / "out"), "--size", "32", "--num-val", "1"]
    assert _run("prepare_ffhq.py", *args) == 0
    lists = {n: (tmp_path / "out" / f"ffhq32{n}.txt").read_text().split() for n in ("", "_train", "_val")}
    assert lists[""] == [f"images32x32/00000/{i:03d}.png" for i in range(4)]
    assert len(lists["_val"]) == 1 and sorted(lists["_train"] + lists["_val"]) == lists[""]
    assert cv2.imread(str(tmp_path / "out" / lists["_val"][0])).shape == (32, 32, 3)
    assert _run("prepare_ffhq.py", *args) == 0  # a re-run keeps the files and the same split
    assert (tmp_path / "out" / "ffhq32_val.txt").read_text().split() == lists["_val"]
    ds = HQImages.from_config(DatasetConfig(name="hq_images", file_list=str(tmp_path / "out" / "ffhq32_train.txt")))
    assert len(ds) == 3 and ds[0]["hq"].shape == (3, 32, 32)
