"""The web demo (app.py): driven in headless Chromium with Playwright, and its handler called directly.

The browser test needs Debian's `chromium` (/usr/bin/chromium, or $DIFFACE_CHROMIUM) and the
`playwright` package; without them it is skipped with the reason, unless DIFFACE_REQUIRE_BROWSER=1
(as in CI), where that is a failure.

`python tests/test_app.py --screenshot docs/app.png` drives the same page with the bundled demo
model on an example face and saves the screenshot shown in docs/web_demo.md.
"""
from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import app  # noqa: E402
import datapipe.image_io  # noqa: E402
import difface.restorer  # noqa: E402
from difface import cli as inference  # noqa: E402
from datapipe.image_io import read_image, write_image  # noqa: E402

CHROMIUM = os.environ.get("DIFFACE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
FACE_W, FACE_H = 40, 48  # not the tiny model's 32x32: the output must come back at the input's size


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(cfg: str, tmp: Path, timeout: float = 120.0, **env_vars) -> tuple[subprocess.Popen, str]:
    """`python app.py --cfg CFG` on a free local port; returns the process and its URL once it answers."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "GRADIO_TEMP_DIR": str(tmp / "gradio"), "OMP_NUM_THREADS": "1",
           **env_vars}
    log = open(tmp / "app.log", "w")
    proc = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--cfg", cfg, "--port", str(port),
                             "--device", "cpu", "--max-file-mb", "1"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited with {proc.returncode}: {(tmp / 'app.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"app.py did not answer within {timeout} s")


def stop_app(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def set_number(page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def restore_in_page(page, url: str, image: Path, aligned: bool = True, samples: int = 1, estimate: bool = False,
                    steps: int = 0, watch_progress: bool = False):
    """Open the app, upload `image`, press Restore and wait for the before/after image.

    With `watch_progress`, also wait for the progress bar to report a reverse step.
    """
    page.goto(url)
    page.wait_for_selector("#restore")
    page.locator("#input-image input[type=file]").set_input_files(str(image))
    if aligned:
        page.locator("#aligned input[type=checkbox]").check()
    if samples != 1:
        set_number(page, "num-samples", samples)
    if steps:
        set_number(page, "steps", steps)
    if estimate:
        page.locator("#show-estimate input[type=checkbox]").check()
    page.wait_for_timeout(500)  # the upload reaches the server
    page.click("#restore")
    if watch_progress:
        page.locator("#compare").get_by_text("reverse step").first.wait_for(timeout=60_000)
    page.wait_for_function("document.querySelectorAll('#compare img').length >= 2 && "
                           "[...document.querySelectorAll('#compare img')].every(i => i.complete && i.naturalWidth)",
                           timeout=120_000)


def launch_browser(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


@pytest.fixture(scope="module")
def tiny_app(tiny_cfg, tmp_path_factory):
    proc, url = start_app(str(tiny_cfg), tmp_path_factory.mktemp("app"))
    yield proc, url
    stop_app(proc)


@pytest.fixture(scope="module")
def playwright():
    reason = None
    if not Path(CHROMIUM).is_file():
        reason = f"Chromium not found at {CHROMIUM} (apt-get install chromium, or set DIFFACE_CHROMIUM)"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reason = "the playwright package is not installed (pip install playwright)"
    if reason:
        if os.environ.get("DIFFACE_REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    with sync_playwright() as p:
        yield p


def test_browser_restores_an_upload_and_reports_a_bad_one(tiny_app, playwright, tmp_path):
    proc, url = tiny_app
    face = tmp_path / "face.png"
    write_image(face, np.random.default_rng(0).integers(0, 256, (FACE_H, FACE_W, 3), dtype=np.uint8))
    browser = launch_browser(playwright)
    try:
        page = browser.new_page()
        restore_in_page(page, url, face, steps=250, watch_progress=True)  # 250 steps: long enough to see
        shown = {img.get_attribute("src").rsplit("/", 1)[-1]: img.evaluate("i => [i.naturalWidth, i.naturalHeight]")
                 for img in page.locator("#compare img").all()}
        assert shown["face.png"] == [FACE_W, FACE_H], shown  # the restored file, as shown in the page
        assert all(size == [FACE_W, FACE_H] for size in shown.values()), shown
        link = page.locator("#download a[download='face.png']")
        link.wait_for(timeout=10_000)
        png = page.request.get(link.get_attribute("href")).body()  # the PNG the page offers for download
        assert Image.open(io.BytesIO(png)).size == (FACE_W, FACE_H)
        page.locator("#samples img").first.wait_for(timeout=10_000)
        assert page.locator("#samples img").count() == 1

        text = tmp_path / "notes.png"
        text.write_text("a text file with an image's name")
        page.locator("#input-image input[type=file]").set_input_files(str(text))
        page.wait_for_timeout(500)
        page.click("#restore")
        page.get_by_text("notes.png: not an image file").wait_for(timeout=30_000)
    finally:
        browser.close()
    assert proc.poll() is None, "the app must stay up after a bad upload"
    with urllib.request.urlopen(url, timeout=5) as r:
        assert r.status == 200


def test_no_server_file_is_readable(tiny_app, tiny_cfg):
    proc, url = tiny_app
    secrets = [REPO / "app.py", Path("/etc/passwd"), Path(tiny_cfg), Path(tiny_cfg).parent / "prior.pth"]
    tried = []
    for path in secrets:
        for route in ("gradio_api/file=", "file=", "gradio_api/file=../../../../../.."):
            tried.append(f"{url}{route}{path}")
    for address in tried:
        try:
            with urllib.request.urlopen(address, timeout=5) as r:
                body = r.read()
        except urllib.error.HTTPError as e:
            assert e.code in (403, 404), (address, e.code)
            continue
        assert b"root:" not in body and b"import" not in body and b"tiny test model" not in body, address
        assert body.lstrip()[:15].lower().startswith((b"<!doctype", b"<html")), address  # the page, not the file


def test_sigterm_removes_the_results_folder(tiny_cfg, tmp_path):
    results = tmp_path / "tmpdir"
    results.mkdir()
    proc, _ = start_app(str(tiny_cfg), tmp_path, TMPDIR=str(results))
    assert list(results.glob("difface-app-*")), "the app keeps its results in a folder of its own"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert not list(results.glob("difface-app-*")), "removed on SIGTERM as on Ctrl-C"


def test_results_are_kept_only_while_a_page_can_show_them(tiny_restorer, tmp_path, monkeypatch):
    monkeypatch.setattr(app, "KEEP_RESULTS", 3)
    folders = [tiny_restorer.new_folder() for _ in range(5)]
    assert [f.exists() for f in folders] == [False, False, True, True, True]


def test_uploads_above_the_size_limit_are_refused(tiny_app):
    proc, url = tiny_app

    def upload(size: int):
        body = (b"--XX\r\nContent-Disposition: form-data; name=\"files\"; filename=\"x.png\"\r\n"
                b"Content-Type: image/png\r\n\r\n" + b"\0" * size + b"\r\n--XX--\r\n")
        request = urllib.request.Request(f"{url}gradio_api/upload", data=body,
                                         headers={"Content-Type": "multipart/form-data; boundary=XX"})
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    assert upload(1000)[0] == 200
    status, message = upload(1_500_000)  # the app runs with --max-file-mb 1
    assert status == 413 and "maximum allowed size of 1000000 bytes" in message


def _queue_events(url: str, path: str, session: str) -> list[dict]:
    """Ask the app (as its page does) to restore the file at `path`; the queue's events."""
    import json
    payload = {"data": [{"path": path, "meta": {"_type": "gradio.FileData"}}, True, 400, 0, "ddim",
                        1, 12345, 2, False, False, False], "fn_index": 0, "session_hash": session}
    request = urllib.request.Request(f"{url}gradio_api/queue/join", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as r:
        assert r.status == 200
    with urllib.request.urlopen(f"{url}gradio_api/queue/data?session_hash={session}", timeout=60) as r:
        return [json.loads(line[5:]) for line in r.read().decode().splitlines() if line.startswith("data:")]


def test_a_crafted_request_cannot_restore_a_server_file(tiny_app):
    """A client naming a server path as its upload (here an image of the repository) is refused,
    while the same request with the path of a real upload succeeds."""
    import json
    proc, url = tiny_app
    server_image = sorted((REPO / "examples" / "faces").glob("*.png"))[0]
    events = _queue_events(url, str(server_image), "crafted1")
    done = [e for e in events if e.get("msg") == "process_completed"]
    assert len(done) == 1 and done[0]["success"] is False, events
    assert "file=" not in json.dumps(events) and server_image.name not in json.dumps(events)
    boundary = "difface-test-boundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"face.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n")
    body = head.encode() + server_image.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    upload = urllib.request.Request(f"{url}gradio_api/upload", data=body,
                                    headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(upload, timeout=10) as r:
        uploaded = json.loads(r.read())[0]
    done = [e for e in _queue_events(url, uploaded, "control1") if e.get("msg") == "process_completed"]
    assert len(done) == 1 and done[0]["success"] is True, done


@pytest.fixture(scope="module")
def tiny_restorer(tiny_cfg):
    return app.Handler(app.parse_args(["--cfg", str(tiny_cfg), "--device", "cpu"]))


class Bar:
    """Records what the handler reports to the page's progress bar."""

    def __init__(self):
        self.calls = []

    def __call__(self, value, desc=None, **kw):
        self.calls.append(value)


def _restore(restorer, path, aligned=True, start_step=400, steps=0, samples=1, upscale=2, estimate=False, bar=None,
             allow_downscale=False):
    return restorer.restore(str(path) if path else None, aligned, start_step, steps, "ddim", samples, 12345, upscale,
                            estimate, bar or Bar(), allow_downscale)


def test_handler_writes_the_bytes_the_command_line_writes(tiny_restorer, tiny_cfg, tmp_path):
    face = tmp_path / "in" / "face.png"
    write_image(face, np.random.default_rng(1).integers(0, 256, (FACE_H, FACE_W, 3), dtype=np.uint8))
    bar = Bar()
    compare, samples, estimate, download, faces, note = _restore(tiny_restorer, face, samples=2, estimate=True, bar=bar)
    assert [c for c in bar.calls if isinstance(c, tuple)] == [(1, 3), (2, 3), (3, 3)]  # the samples run together
    out = tmp_path / "cli"
    assert inference.main(["-i", str(face), "-o", str(out), "--aligned", "--cfg", str(tiny_cfg), "--device", "cpu",
                           "--num-samples", "2", "--save-estimate"]) == 0
    assert [Path(p).read_bytes() for p, _ in samples] == [(out / f"face_s{k}.png").read_bytes() for k in range(2)]
    assert Path(estimate["value"]).read_bytes() == (out / "estimates" / "face.png").read_bytes()
    assert Path(download).read_bytes() == (out / "face_s0.png").read_bytes()
    assert compare[0].shape == (FACE_H, FACE_W, 3) and faces["visible"] is False


def png_header(path: Path, side: int) -> Path:
    """A PNG whose header claims side x side RGB pixels, with almost no pixel data (about 70 bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", side.to_bytes(4, "big") * 2 + b"\x08\x02\x00\x00\x00")
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))
    return path


def test_bad_uploads_are_refused_with_a_message(tiny_restorer, tmp_path, monkeypatch):
    monkeypatch.setattr(difface.restorer, "read_image", lambda *a, **k: pytest.fail("decoded before the checks"))
    monkeypatch.setattr(datapipe.image_io, "read_image", lambda *a: pytest.fail("decoded before the checks"))
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    cases = [(png_header(tmp_path / "big.png", 8000), "big.png: the image is 8000x8000 = 64.0 megapixels, above"),
             (png_header(tmp_path / "bomb.png", 30000), "bomb.png: the image is 30000x30000 = 900.0 megapixels, above"),
             (empty, "empty.jpg: the file is empty")]
    for path, words in cases:
        with pytest.raises(app.UploadError, match=words.replace(".", r"\.")):
            _restore(tiny_restorer, path)
    with pytest.raises(app.UploadError, match="upload an image first"):
        _restore(tiny_restorer, None)


def test_bad_settings_are_refused_with_a_message(tiny_restorer, tmp_path):
    import gradio as gr
    face = tmp_path / "face.png"
    write_image(face, np.zeros((FACE_H, FACE_W, 3), np.uint8))
    with pytest.raises(gr.Error, match="cannot take 200 distinct steps below start step 100"):
        tiny_restorer(str(face), True, 100, 200, "ddim", 1, 0, 2, False, False, Bar())
    with pytest.raises(gr.Error, match="invalid value 'euler' for 'sampling.sampler'"):
        tiny_restorer(str(face), True, 100, 0, "euler", 1, 0, 2, False, False, Bar())
    with pytest.raises(gr.Error, match="samples 1-4"):
        tiny_restorer(str(face), True, 100, 0, "ddim", 50, 0, 2, False, False, Bar())
    small = tmp_path / "tiny.png"
    write_image(small, np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(gr.Error, match="tiny.png: image is 16x16, too small") as caught:
        tiny_restorer(str(small), True, 100, 0, "ddim", 1, 0, 2, False, False, Bar())
    assert str(tmp_path) not in str(caught.value), "no server path in messages"


def test_a_photo_too_large_at_the_chosen_upscale_is_refused_with_the_upscale_that_fits(tiny_restorer, tmp_path):
    import cv2
    import gradio as gr
    big = tmp_path / "black.png"  # 36 megapixels, under the upload limit; x4 would be 576
    cv2.imwrite(str(big), np.zeros((6000, 6000, 3), np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    with pytest.raises(gr.Error, match=r"black.png: the restored photo would be 24000x24000 .*upscale 1 gives "
                                       r"6000x6000") as caught:
        tiny_restorer(str(big), False, 100, 0, "ddim", 1, 0, 4, False, False, Bar())
    assert str(tmp_path) not in str(caught.value)


def test_a_whole_photo_shows_its_faces(tiny_restorer):
    photo = REPO / "examples" / "photos" / "group_00.jpg"
    *_, faces, note = _restore(tiny_restorer, photo, aligned=False, upscale=1)
    assert faces["value"] == [] and "4 face(s) larger than the model's 32 px left as they were" in note
    compare, samples, estimate, download, faces, note = _restore(tiny_restorer, photo, aligned=False, upscale=1,
                                                                 allow_downscale=True)
    h, w = read_image(photo).shape[1:]
    size = (round(w * 512 / h), 512)  # the short side enlarged to 512, upscale 1
    assert read_image(download).shape[1:] == (size[1], size[0])
    assert compare[0].shape[:2] == (size[1], size[0])
    labels = [label for _, label in faces["value"]]
    assert len(labels) >= 4 and labels.count("face 00: input") == labels.count("face 00: restored") == 1
    assert "face(s) restored" in note and estimate["visible"] is False


def screenshot(out: Path) -> None:
    """The screenshot of docs/web_demo.md: the demo model on an example face at its own scale."""
    import tempfile

    from playwright.sync_api import sync_playwright
    face = sorted((REPO / "examples" / "faces").glob("*.png"))[0]
    tmp = Path(tempfile.mkdtemp())
    proc, url = start_app("demo", tmp)
    try:
        with sync_playwright() as p:
            browser = launch_browser(p)
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            restore_in_page(page, url, face, samples=3, estimate=True)
            page.wait_for_function("document.querySelectorAll('#samples img').length >= 3", timeout=60_000)
            page.wait_for_timeout(1000)
            page.screenshot(path=str(out), full_page=True)
            browser.close()
    finally:
        stop_app(proc)
    print(f"wrote {out}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--screenshot":
        screenshot(Path(sys.argv[2]))
    else:
        sys.exit("usage: python tests/test_app.py --screenshot docs/app.png")
