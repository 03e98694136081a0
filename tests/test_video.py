"""Videos end to end on CPU: clips made here with PyAV (a real face moving on a background, a sine
audio track), restored by the command line and the library with the tiny random-weight model."""
import json
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

import difface
from datapipe.faces import Face
from datapipe.tracks import FaceTracker, MotionFilter, TrackWindow, face_motion
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
               rotation: int | None = None, pts: list | None = None) -> Path:
    """Encode RGB frames at RATE fps (or at `pts` in 1/RATE s), with a 440 Hz sine as long as the video
    in codec `audio`; `rotation`: the display matrix's counter-clockwise degrees."""
    with av.open(str(path), "w") as c:
        v = c.add_stream(codec, rate=RATE)
        v.height, v.width = frames[0].shape[:2]
        v.pix_fmt = "yuv420p"
        if rotation is not None:
            v.set_display_rotation(rotation)
        a = c.add_stream(audio, rate=AUDIO_RATE, layout="mono") if audio else None
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i if pts is None else pts[i]
            for p in v.encode(frame):
                c.mux(p)
        for p in v.encode():
            c.mux(p)
        if a is not None:
            n = AUDIO_RATE * (len(frames) if pts is None else pts[-1] + 1) // RATE
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
                 "audio": [(s.codec_context.name, s.duration and float(s.duration * s.time_base))
                           for s in c.streams.audio]}
        decoded = list(c.decode(v))
        facts["times"] = [float(f.time) for f in decoded]
        frames = [f.to_ndarray(format="rgb24") for f in decoded]
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
    summary = json.loads(sorted(restored.glob("manifest_*.json"))[-1].read_text())["summary"]
    assert summary["seconds_per_image"] is None  # a video is not an image: its time is per frame
    assert summary["seconds_per_frame"] == pytest.approx(record["seconds"] / 5, abs=1e-3)


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
    for wrong in (["--detection-weight", "0"], ["--start", "2", "--end", "1"], ["--max-frames", "0"]):
        with pytest.raises(SystemExit) as stop:
            cli.main(["-i", str(folder), "-o", str(tmp_path / "o"), "--dry-run", *wrong])
        assert stop.value.code == 2


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


def _textured_frames(shifts) -> list:
    """Frames whose content (a smooth random texture) sits at the given whole-pixel (dx, dy) offsets."""
    rng = np.random.default_rng(1)
    texture = cv2.GaussianBlur((rng.random((160, 200, 3)) * 255).astype(np.uint8), (0, 0), 2)
    return [np.ascontiguousarray(texture[20 - dy:140 - dy, 20 - dx:180 - dx]) for dx, dy in shifts]


def test_face_motion_is_measured_to_a_fraction_of_a_pixel():
    frames = _textured_frames([(0, 0), (3, -2)])
    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY).astype(np.float32) for f in frames]
    shift, match = face_motion(grey[0], grey[1], np.array([50, 30, 110, 90]))
    assert np.abs(shift - [3, -2]).max() < 0.1 and match > 0.9


def test_filtered_landmarks_follow_the_motion_and_drop_the_jitter():
    rng = np.random.default_rng(0)
    path = [(round(6 * np.sin(t / 3)), round(3 * np.sin(t / 2))) for t in range(20)]
    frames = _textured_frames(path)
    jitter = rng.normal(0, 1.5, (20, 5, 2))
    motion = MotionFilter(0.2)
    truth = [_face(60 + dx, 40 + dy).landmarks5 for dx, dy in path]
    kept = [motion.update(frames[t], [0], [_face(60 + dx, 40 + dy, jitter=jitter[t])])[0].landmarks5
            for t, (dx, dy) in enumerate(path)]
    offset = np.array([k - tr for k, tr in zip(kept, truth)]).mean(axis=1)  # (20, 2) error of the crop's place
    raw = np.abs(np.diff(jitter.mean(axis=1), axis=0)).mean()
    assert np.abs(np.diff(offset[5:], axis=0)).mean() < 0.25 * raw  # steadier than the detections by far
    assert np.abs(offset[5:]).max() < 1.5  # and not drifting away from them
    still = MotionFilter(0.2)  # identical frames and detections: identical landmarks
    assert all(np.array_equal(still.update(frames[0], [0], [_face(60, 40)])[0].landmarks5, _face(60, 40).landmarks5)
               for _ in range(3))


def test_estimate_window_is_centred_and_forgets():
    window = TrackWindow(radius=3)
    for t in range(20):
        window.add(t, 0, t)
    assert window.centred(0, 0) == [0] and window.centred(1, 0) == [1, 0, 2] and len(window.centred(9, 0)) == 7
    assert np.mean(window.centred(18, 0)) == 18  # symmetric: a steady change keeps its value
    window.forget_before(10)
    assert min(window.values[0]) == 7


@pytest.fixture(scope="module")
def tiny(tiny_cfg):
    return difface.Restorer(str(tiny_cfg), device="cpu")


def test_a_still_face_is_restored_identically_in_every_frame(tiny):
    frames = face_frames(4, step=0)
    video = [f.image for f in restore_frames(tiny, frames, "still.mp4", allow_downscale=True)]
    assert all(np.array_equal(video[0], v) for v in video[1:])
    apart = [f.image for f in restore_frames(tiny, frames, "still.mp4", allow_downscale=True, temporal=False)]
    assert not np.array_equal(apart[0], apart[1])  # frames on their own draw other noise


@pytest.mark.parametrize("estimate_radius", [0, 2])
def test_frames_do_not_depend_on_the_batch_size(tiny, tiny_cfg, estimate_radius):
    frames = face_frames(4, step=3)
    wide = difface.Restorer(str(tiny_cfg), device="cpu", overrides=["batch_size=3"])
    one = [f.image for f in restore_frames(tiny, frames, "walk.mp4", allow_downscale=True,
                                           estimate_radius=estimate_radius)]
    three = [f.image for f in restore_frames(wide, frames, "walk.mp4", allow_downscale=True,
                                             estimate_radius=estimate_radius)]
    assert len(one) == 4 and all(np.array_equal(a, b) for a, b in zip(one, three))


# ------------------------------------------------------------------ awkward inputs

@pytest.fixture(scope="module")
def awkward(tmp_path_factory, tiny_cfg) -> tuple[Path, Path, int]:
    """A folder of awkward videos beside a good one, restored in one run: (inputs, outputs, exit code)."""
    folder = tmp_path_factory.mktemp("awkward")
    (folder / "fake.mp4").write_text("this is not a video\n")
    mkv = write_clip(folder / "full.mkv", face_frames(6)).read_bytes()
    (folder / "cut.mkv").write_bytes(mkv[:len(mkv) // 2])
    (folder / "full.mkv").unlink()
    camera = write_clip(folder / "camera.mp4", face_frames(4)).read_bytes()  # index at the end, as cameras write
    (folder / "camera.mp4").write_bytes(camera[:len(camera) * 2 // 3])
    write_clip(folder / "empty.avi", face_frames(3, face=False), audio="pcm_u8", codec="mpeg4")
    write_clip(folder / "silent.mp4", face_frames(3), audio=None)
    portrait = face_frames(3, size=(128, 96))
    write_clip(folder / "phone.mov", [np.ascontiguousarray(np.rot90(f, -1)) for f in portrait], rotation=90)
    write_clip(folder / "vfr.mkv", face_frames(4), audio="pcm_s16le", pts=[0, 1, 3, 6])
    out = tmp_path_factory.mktemp("awkward_out")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIFFACE_WEIGHTS_URL_BASE", "http://127.0.0.1:9")
        code = cli.main(["-i", str(folder), "-o", str(out), "--cfg", str(tiny_cfg), "--allow-downscale", "--device",
                         "cpu"])
    return folder, out, code


def test_files_that_are_no_videos_fail_alone_with_one_line(awkward, capsys):
    folder, out, code = awkward
    records = manifest(out)
    assert code == 1  # something failed, the rest was done
    assert records["fake.mp4"]["status"] == "failed" and "cannot read video" in records["fake.mp4"]["error"]
    assert "not a video" in records["fake.mp4"]["error"] and "\n" not in records["fake.mp4"]["error"]
    assert records["camera.mp4"]["status"] == "failed" and "truncated" in records["camera.mp4"]["error"]
    assert not (out / "fake.mp4").exists() and not (out / "camera.mp4").exists()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_a_truncated_clip_gives_the_frames_it_holds(awkward):
    folder, out, _ = awkward
    record = manifest(out)["cut.mkv"]
    frames, _ = decode(out / "cut.mp4")
    assert record["status"] == "done" and 0 < record["frames"] < 6 and len(frames) == record["frames"]


def test_a_video_without_faces_is_upscaled_and_odd_audio_reencoded(awkward):
    folder, out, _ = awkward
    record = manifest(out)["empty.avi"]
    frames, facts = decode(out / "empty.mp4")
    source, _ = decode(folder / "empty.avi")
    assert record["status"] == "no face" and record["faces_per_frame"] == [0, 0, 0]
    assert len(frames) == 3 and frames[0].shape == (224, 192, 3)
    up = cv2.resize(source[1], (192, 224), interpolation=cv2.INTER_LANCZOS4)
    assert np.abs(frames[1].astype(int) - up).mean() < 3  # the frame itself, upscaled (and encoded)
    assert record["audio"] == "re-encoded to aac" and facts["audio"][0][0] == "aac"
    assert facts["audio"][0][1] == pytest.approx(3 / RATE, abs=0.07)


def test_a_clip_without_audio_gives_a_video_without_audio(awkward):
    folder, out, _ = awkward
    frames, facts = decode(out / "silent.mp4")
    assert len(frames) == 3 and facts["audio"] == [] and manifest(out)["silent.mp4"]["audio"] is None
    assert manifest(out)["silent.mp4"]["faces_per_frame"] == [1, 1, 1]


def test_a_rotated_phone_clip_is_restored_upright(awkward):
    folder, out, _ = awkward
    assert probe_video(folder / "phone.mov").rotation == 90
    frames, _ = decode(out / "phone.mp4")
    record = manifest(out)["phone.mov"]
    assert frames[0].shape == (256, 192, 3) and record["size"] == [96, 128]  # portrait, as displayed
    assert record["faces_per_frame"] == [1, 1, 1]  # found only in the upright frames


def test_variable_frame_timing_is_kept(awkward):
    folder, out, _ = awkward
    frames, facts = decode(out / "vfr.mp4")
    assert facts["times"] == pytest.approx([0, 1 / RATE, 3 / RATE, 6 / RATE], abs=1e-3)
    assert manifest(out)["vfr.mkv"]["audio"] == "copied" and facts["audio"][0][0] == "pcm_s16le"


def test_a_stopped_or_refused_video_leaves_no_file(tiny, tiny_cfg, clips, tmp_path):
    def stop(done, total):
        if done == 2:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        tiny.restore_video(clips / "walk.mp4", tmp_path / "walk.mp4", progress=stop, allow_downscale=True)
    assert list(tmp_path.iterdir()) == []
    small = difface.Restorer(str(tiny_cfg), device="cpu", max_output_pixels=20_000)
    with pytest.raises(difface.InputError, match="above the output limit"):
        small.restore_video(clips / "walk.mp4", tmp_path / "walk.mp4")
    with pytest.raises(VideoError, match="no frame between"):
        list(read_frames(clips / "walk.mp4", start=5.0, end=6.0))
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ decoding and encoding beside the restoration

def _threads() -> set:
    import threading
    return {t.name for t in threading.enumerate() if t.name.startswith("difface-")}


def test_overlapped_decoding_and_encoding_give_the_same_video(tiny, clips, tmp_path, monkeypatch):
    import threading

    from datapipe import video as vio
    from difface import video as dv
    decoders, encoders, real_read, real_write = set(), {}, dv.read_frames, vio.VideoWriter.write

    def read(*args, **kwargs):
        for frame in real_read(*args, **kwargs):
            decoders.add(threading.current_thread().name)
            yield frame

    def write(self, image, time):  # the frames handed to the encoder (H.264 itself may differ between runs)
        encoders.setdefault(threading.current_thread().name, []).append((image.copy(), time))
        real_write(self, image, time)
    monkeypatch.setattr(dv, "read_frames", read)
    monkeypatch.setattr(vio.VideoWriter, "write", write)
    apart = tiny.restore_video(clips / "walk.mp4", tmp_path / "serial.mp4", allow_downscale=True, overlap=False)
    assert decoders == {threading.main_thread().name} and list(encoders) == [threading.main_thread().name]
    serial = encoders.pop(threading.main_thread().name)
    decoders.clear()
    both = tiny.restore_video(clips / "walk.mp4", tmp_path / "overlap.mp4", allow_downscale=True)
    assert decoders == {"difface-decode"} and list(encoders) == ["difface-encode"]
    overlapped = encoders["difface-encode"]
    assert both.frames == apart.frames == len(overlapped) == len(serial) == 5
    assert all(np.array_equal(a, b) and s == t for (a, s), (b, t) in zip(serial, overlapped))
    frames, facts = decode(tmp_path / "overlap.mp4")
    assert len(frames) == 5 and facts["audio"] == decode(tmp_path / "serial.mp4")[1]["audio"]
    assert _threads() == set()


@pytest.fixture
def short_queues(monkeypatch):
    """Queues of one frame, so that the threads wait on them when the restoration stops."""
    from difface import video as dv
    monkeypatch.setattr(dv, "QUEUE_FRAMES", 1)


def test_an_encoding_error_stops_the_video_and_leaves_no_file(tiny, clips, tmp_path, monkeypatch, short_queues):
    from datapipe import video as vio
    real = vio.VideoWriter.write

    def failing(self, image, time):
        if self.frames == 2:
            raise VideoError("disk full (simulated)")
        real(self, image, time)
    monkeypatch.setattr(vio.VideoWriter, "write", failing)
    with pytest.raises(difface.InputError, match="disk full"):
        tiny.restore_video(clips / "walk.mp4", tmp_path / "walk.mp4", allow_downscale=True)
    assert list(tmp_path.iterdir()) == [] and _threads() == set()


def test_a_decoding_error_reaches_the_caller_and_stops_the_threads(tiny, clips, tmp_path, monkeypatch, short_queues):
    from difface import video as dv
    real = dv.read_frames

    def breaking(*args, **kwargs):
        for frame in real(*args, **kwargs):
            if frame.index == 3:
                raise MemoryError("decoder out of memory (simulated)")
            yield frame
    monkeypatch.setattr(dv, "read_frames", breaking)
    with pytest.raises(MemoryError, match="simulated"):
        tiny.restore_video(clips / "walk.mp4", tmp_path / "walk.mp4", allow_downscale=True)
    assert list(tmp_path.iterdir()) == [] and _threads() == set()


def test_stopping_early_stops_the_threads(tiny, clips, tmp_path, short_queues):
    def stop(done, total):
        assert _threads() == {"difface-decode", "difface-encode"}
        if done == 2:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        tiny.restore_video(clips / "walk.mp4", tmp_path / "walk.mp4", progress=stop, allow_downscale=True)
    assert list(tmp_path.iterdir()) == [] and _threads() == set()
    frames = restore_frames(tiny, face_frames(6), "walk.mp4", allow_downscale=True)
    next(frames)
    frames.close()  # a caller of the generator that stops after one frame
    assert _threads() == set()
