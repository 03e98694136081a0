"""Videos end to end on CPU: clips made here with PyAV (a real face moving on a background, a sine
audio track), restored by the command line and the library with the tiny random-weight model."""
import json
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

import difface
from datapipe.faces import Face
from datapipe.tracks import FaceTracker, TrackSmoother
from datapipe.video import VideoError, probe_video, read_frames
from difface import cli
from difface.video import restore_frames

REPO = Path(__file__).resolve().parents[1]
FACE = REPO / "tests" / "fixtures" / "faces" / "hq_aligned" / "celebahq_256" / "ref_female_015248.jpg"
RATE = 12
AUDIO_RATE = 16000


def face_frames(count: int, size=(112, 96), face_side: int = 64, step: int = 2, face: bool = True) -> list:
    """`count` frames (height, width) of a grey-green background with the face `step` px further right each frame."""
    h, w = size
    bg = np.zeros((h, w, 3), np.uint8)
    bg[..., 0], bg[..., 1], bg[..., 2] = 90, np.linspace(40, 200, w).astype(np.uint8)[None], 120
    crop = cv2.resize(cv2.imread(str(FACE))[..., ::-1], (face_side, face_side), interpolation=cv2.INTER_AREA)
    frames = []
    for i in range(count):
        f = bg.copy()
        if face:
            f[8:8 + face_side, 6 + step * i:6 + step * i + face_side] = crop
        frames.append(f)
    return frames


def write_clip(path: Path, frames: list, audio: str | None = "aac", codec: str = "libx264",
               rotation: int | None = None) -> Path:
    """Encode RGB frames at RATE fps, with a 440 Hz sine as long as the video in codec `audio`."""
    with av.open(str(path), "w") as c:
        v = c.add_stream(codec, rate=RATE)
        v.height, v.width = frames[0].shape[:2]
        v.pix_fmt = "yuv420p"
        if rotation is not None:
            v.set_display_rotation(rotation)
        a = c.add_stream(audio, rate=AUDIO_RATE, layout="mono") if audio else None
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            for p in v.encode(frame):
                c.mux(p)
        for p in v.encode():
            c.mux(p)
        if a is not None:
            n = AUDIO_RATE * len(frames) // RATE
            sine = 0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / AUDIO_RATE)
            fmt = a.codec_context.format.name
            for k in range(0, n, 1024):
                chunk = sine[k:k + 1024][None]
                data = {"fltp": chunk.astype(np.float32), "s16": (chunk * 32767).astype(np.int16),
                        "u8": (chunk * 127 + 128).astype(np.uint8)}[fmt]
                af = av.AudioFrame.from_ndarray(data, format=fmt, layout="mono")
                af.sample_rate, af.pts = AUDIO_RATE, k
                for p in a.encode(af):
                    c.mux(p)
            for p in a.encode():
                c.mux(p)
    return path


def decode(path: Path) -> tuple[list, dict]:
    """The frames of a video (RGB arrays) and its streams' facts."""
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        facts = {"rate": v.average_rate, "codec": v.codec_context.name,
                 "audio": [(s.codec_context.name, float(s.duration * s.time_base)) for s in c.streams.audio]}
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(v)]
    return frames, facts


def manifest(out: Path) -> dict:
    found = sorted(out.glob("manifest_*.json"))
    return {Path(r["input"]).name: r for r in json.loads(found[-1].read_text())["images"]}


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("clips")
    write_clip(folder / "walk.mp4", face_frames(5))
    return folder


@pytest.fixture(scope="module")
def restored(clips, tiny_cfg, tmp_path_factory) -> Path:
    """One command-line run over the clip folder (tiny model; its 32 px crops need --allow-downscale)."""
    out = tmp_path_factory.mktemp("out")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIFFACE_WEIGHTS_URL_BASE", "http://127.0.0.1:9")
        code = cli.main(["-i", str(clips), "-o", str(out), "--cfg", str(tiny_cfg), "--allow-downscale", "--device",
                         "cpu"])
    assert code == 0
    return out


def test_clip_keeps_frame_count_rate_size_and_audio(clips, restored):
    frames, facts = decode(restored / "walk.mp4")
    _, source = decode(clips / "walk.mp4")
    assert len(frames) == 5 and facts["rate"] == RATE and facts["codec"] == "h264"
    assert frames[0].shape == (224, 192, 3)  # 112x96 times the default upscale 2
    assert [a for a, _ in facts["audio"]] == ["aac"] == [a for a, _ in source["audio"]]
    assert facts["audio"][0][1] == pytest.approx(source["audio"][0][1], abs=1e-3)
    record = manifest(restored)["walk.mp4"]
    assert record["status"] == "done" and record["frames"] == 5 and record["audio"] == "copied"
    assert record["faces_per_frame"] == [1] * 5 and record["tracks"] == 1 and record["seconds_per_frame"] > 0
    assert not list(restored.glob(".*.part"))


def test_the_face_is_restored_where_it_is(clips, restored):
    """Only the face region changes beyond upscaling noise: the paste-back lands on the moving face."""
    out, _ = decode(restored / "walk.mp4")
    src, _ = decode(clips / "walk.mp4")
    for i in (0, 4):
        up = cv2.resize(src[i], (192, 224), interpolation=cv2.INTER_LANCZOS4).astype(int)
        diff = np.abs(out[i].astype(int) - up).mean(axis=2)
        x0 = 2 * (6 + 2 * i)
        inside, outside = diff[16:16 + 128, x0:x0 + 128].mean(), diff[:, x0 + 150:].mean()
        assert inside > 4 * outside, (i, inside, outside)


def test_start_end_and_max_frames_cut_the_clip(clips, tiny_cfg, tmp_path):
    assert cli.main(["-i", str(clips / "walk.mp4"), "-o", str(tmp_path / "a"), "--cfg", str(tiny_cfg),
                     "--max-frames", "2", "--device", "cpu"]) == 0
    assert cli.main(["-i", str(clips / "walk.mp4"), "-o", str(tmp_path / "b"), "--cfg", str(tiny_cfg),
                     "--start", str(1 / RATE), "--end", str(3.5 / RATE), "--device", "cpu"]) == 0
    a, facts_a = decode(tmp_path / "a" / "walk.mp4")
    b, facts_b = decode(tmp_path / "b" / "walk.mp4")
    assert len(a) == 2 and len(b) == 3 and facts_b["rate"] == RATE
    assert facts_a["audio"][0][1] < 0.4 and facts_b["audio"][0][1] < 0.4  # the audio is cut with the video


def test_a_folder_plans_videos_beside_images(clips, tiny_cfg, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "walk.mp4").write_bytes((clips / "walk.mp4").read_bytes())
    (folder / "walk.mov").write_bytes((clips / "walk.mp4").read_bytes())
    cv2.imwrite(str(folder / "photo.png"), face_frames(1)[0])
    assert cli.main(["-i", str(folder), "-o", str(tmp_path / "out"), "--cfg", str(tiny_cfg), "--dry-run"]) == 0
    planned = capsys.readouterr().out
    for line in ("photo.png -> " + str(tmp_path / "out" / "restored_image" / "photo.png"),
                 "walk.mov -> " + str(tmp_path / "out" / "walk_mov.mp4"),
                 "walk.mp4 -> " + str(tmp_path / "out" / "walk_mp4.mp4")):
        assert line in planned
    assert cli.main(["-i", str(folder / "walk.mp4"), "-o", str(tmp_path / "o"), "--aligned", "--dry-run"]) == 2


# ------------------------------------------------------------------ temporal consistency

def _face(x: float, y: float = 50.0, side: float = 40.0, jitter=None) -> Face:
    """A face whose box starts at (x, y); five landmarks inside it (plus `jitter`, (5, 2))."""
    lm = np.array([[0.3, 0.4], [0.7, 0.4], [0.5, 0.6], [0.35, 0.8], [0.65, 0.8]]) * side + [x, y]
    lm = lm + (0 if jitter is None else jitter)
    return Face(np.array([x, y, x + side, y + side], np.float32), lm.astype(np.float32), 1.0)


def test_tracker_follows_moving_faces_and_starts_new_tracks():
    tracker = FaceTracker()
    assert tracker.update([_face(10), _face(100)]) == [0, 1]
    assert tracker.update([_face(104), _face(13)]) == [1, 0]  # order of detection does not matter
    assert tracker.update([_face(16), _face(200)]) == [0, 2]  # a face far from every track starts one
    for _ in range(6):  # track 1 unseen for more than max_gap frames ends
        tracker.update([])
    assert tracker.update([_face(104)]) == [3]


def test_smoothing_keeps_steady_motion_and_averages_jitter():
    rng = np.random.default_rng(0)
    smoother = TrackSmoother(radius=3)
    jitter = rng.normal(0, 1.5, (20, 5, 2))
    for t in range(20):
        smoother.add(t, [0], [_face(10 + 2 * t, jitter=jitter[t])])
    exact = TrackSmoother(radius=3)
    for t in range(20):
        exact.add(t, [0], [_face(10 + 2 * t)])
    truth = [_face(10 + 2 * t).landmarks5 for t in range(20)]
    for t in range(20):  # steady motion (no jitter) comes back exactly, ends included
        assert np.allclose(exact.smoothed(t, 0)[0], truth[t], atol=1e-4)
    raw = np.mean([np.abs(jitter[t]).mean() for t in range(3, 17)])
    smooth = np.mean([np.abs(smoother.smoothed(t, 0)[0] - truth[t]).mean() for t in range(3, 17)])
    assert smooth < 0.5 * raw  # a 7-frame mean: about 1 / sqrt(7) of the jitter


@pytest.fixture(scope="module")
def tiny(tiny_cfg):
    return difface.Restorer(str(tiny_cfg), device="cpu")


def test_a_still_face_is_restored_identically_in_every_frame(tiny):
    frames = face_frames(4, step=0)
    video = [f.image for f in restore_frames(tiny, frames, "still.mp4", allow_downscale=True)]
    assert all(np.array_equal(video[0], v) for v in video[1:])
    apart = [f.image for f in restore_frames(tiny, frames, "still.mp4", allow_downscale=True, temporal=False)]
    assert not np.array_equal(apart[0], apart[1])  # frames on their own draw other noise


def test_frames_do_not_depend_on_the_batch_size(tiny, tiny_cfg):
    frames = face_frames(4, step=3)
    wide = difface.Restorer(str(tiny_cfg), device="cpu", overrides=["batch_size=3"])
    one = [f.image for f in restore_frames(tiny, frames, "walk.mp4", allow_downscale=True)]
    three = [f.image for f in restore_frames(wide, frames, "walk.mp4", allow_downscale=True)]
    assert all(np.array_equal(a, b) for a, b in zip(one, three))
