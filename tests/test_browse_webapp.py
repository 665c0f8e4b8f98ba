"""`multilabel-imagenet label-regions` (Supp. F.5): the web app's API, and the page driven in headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict

import numpy as np
import pytest
from browse_support import browser_or_skip, chromium, demo_dataset, full_page_screenshot, tiny_labeler
from click.testing import CliRunner
from PIL import Image
from scipy import ndimage

from multilabel_imagenet import images
from multilabel_imagenet.browse import source, webapp
from multilabel_imagenet.builder import proposals, regions
from multilabel_imagenet.cli import main
from multilabel_imagenet.dataset import importers

TIMEOUT = 30


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    folder, labels, proposals = demo_dataset(root)
    checkpoint = tiny_labeler(root / "head.safetensors")
    return {"root": root, "folder": folder, "labels": labels, "proposals": proposals, "checkpoint": checkpoint}


def _masks(demo, image_id: str) -> tuple[list[np.ndarray], int, int]:
    """The stored proposals of ``image_id`` as bool masks, and the image's height and width."""
    (row,) = [p for split in demo["proposals"].values() for p in split if p.image_id == image_id]
    return [importers.decode_mask(asdict(m), row.height, row.width, image_id) for m in row.masks], row.height, row.width


def _expected(ranked) -> list[tuple[int, str, float]]:
    return [(r.index, r.name, r.probability) for r in ranked]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ProposerStub:
    """Stands in for :class:`regions.MaskCutProposer` (tested in test_regions.py): fixed masks, counted calls."""

    configs = ()

    def __init__(self, masks):
        self.masks, self.calls = masks, 0

    def __call__(self, pixels) -> list:
        self.calls += 1
        return [proposals.encode(m, "stub") for m in self.masks]


class Client:
    """JSON over HTTP to a server on 127.0.0.1, with bounded timeouts."""

    def __init__(self, base: str):
        self.base = base

    def __call__(self, path: str, body: bytes | dict | None = None) -> tuple[int, dict | bytes]:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        try:
            with urllib.request.urlopen(urllib.request.Request(self.base + path, data=data), timeout=TIMEOUT) as r:
                status, payload, kind = r.status, r.read(), r.headers["Content-Type"]
        except urllib.error.HTTPError as err:
            status, payload, kind = err.code, err.read(), err.headers["Content-Type"]
        return status, json.loads(payload) if kind == "application/json" else payload


@pytest.fixture()
def serve():
    """Start apps on a free loopback port in a thread; shut every one down afterwards."""
    started = []

    def start(app: webapp.LabelingApp) -> Client:
        server = webapp.make_server(app)  # host 127.0.0.1, port 0: a free one
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        started.append((server, thread))
        host, port = server.server_address[:2]
        assert host == "127.0.0.1"
        return Client(f"http://{host}:{port}")

    yield start
    for server, thread in started:
        server.shutdown()
        server.server_close()
        thread.join(timeout=TIMEOUT)
        assert not thread.is_alive()


def test_api_classifies_stored_and_maskcut_proposals_and_names_bad_requests(demo, serve, tmp_path, monkeypatch):
    region = regions.RegionLabeler(demo["checkpoint"])
    upload = demo["root"] / "scenes" / "train" / demo["labels"]["train"][0].path
    made = ProposerStub(_masks(demo, demo["labels"]["train"][0].image_id)[0])
    view = source.DatasetView(demo["folder"], cache_dir=tmp_path / "cache")
    records = images.open_source(demo["root"] / "scenes" / "val")
    api = serve(webapp.LabelingApp(region, records, view, made, top_k=5))

    assert api("/api/images?q=VAL_00000002")[1]["total"] == 1
    image_id = records[0].image_id
    status, png = api(f"/api/image/{image_id}")
    assert status == 200 and np.array_equal(
        np.asarray(Image.open(io.BytesIO(png))), np.asarray(images.decode_image(records[0].full_path))
    )
    assert api("/api/classify", {"image": image_id, "proposal": 0}) == (
        404,
        {"error": "this image has no proposals loaded"},
    )
    status, found = api(f"/api/proposals/{image_id}")
    masks, h, w = _masks(demo, image_id)
    (stored,) = [p for p in demo["proposals"]["validation"] if p.image_id == image_id]
    assert status == 200 and found["source"] == "dataset" and len(found["proposals"]) == len(masks)
    for p, m in zip(found["proposals"], stored.masks, strict=True):
        assert p["source"] == m.source and [c["index"] for c in p["stored"]] == list(m.classes)
        rgba = np.asarray(Image.open(io.BytesIO(base64.b64decode(p["png"].split(",", 1)[1]))))
        assert rgba.shape == (h, w, 4) and ((rgba[..., 3] > 0) == importers.decode_mask(asdict(m), h, w, "")).all()
    for k, mask in enumerate(masks):
        status, result = api("/api/classify", {"image": image_id, "proposal": k})
        assert status == 200 and result["region"]["proposal"] == k and result["region"]["pixels"] == mask.sum()
        assert [(c["index"], c["name"], c["probability"]) for c in result["classes"]] == _expected(
            region.classify(records[0].full_path, mask=mask)
        )
    status, result = api("/api/classify", {"image": image_id, "box": [-20, 10, 60.5, 50]})
    assert result["region"]["box"] == [0, 10, 60.5, 50] and result["region"]["bbox"] == [0, 10, 61, 40]
    assert [c["index"] for c in result["classes"]] == [
        r.index for r in region.classify(records[0].full_path, box=(0, 10, 60.5, 50))
    ]
    bad = {
        b"not json": "the body is not JSON",
        json.dumps({"image": image_id, "box": [1, 2, 3]}).encode(): "box must be a list of 4 numbers",
        json.dumps(
            {"image": image_id, "box": [1, 1, 3, 3], "proposal": 0}
        ).encode(): "exactly one of 'box', 'proposal' and 'point'",
        json.dumps({"image": image_id, "proposal": 99}).encode(): f"proposal must be an index in 0..{len(masks) - 1}",
        json.dumps({"image": image_id, "box": [-9, -9, -1, -1]}).encode(): "covers no pixel",
    }
    for body, message in bad.items():
        status, error = api("/api/classify", body)
        assert status == 400 and message in error["error"], (body, error)
    background = ~np.any(masks, axis=0)
    y, x = np.unravel_index(np.argmax(ndimage.distance_transform_edt(background)), background.shape)
    assert api("/api/classify", {"image": image_id, "point": [int(x), int(y)]}) == (
        404,
        {"error": f"no proposal holds the pixel ({x}, {y})"},
    )
    assert api("/api/image/nope") == (404, {"error": "no image 'nope'"})
    assert api("/api/nothing")[0] == 404

    assert api("/api/upload?name=junk.bin", b"not an image")[0] == 400
    assert "junk.bin: not a recognised image format" in api("/api/upload?name=junk.bin", b"not an image")[1]["error"]
    status, added = api("/api/upload?name=scene.jpg", upload.read_bytes())
    assert (
        status == 200 and added["id"] == "upload-1" and api("/api/images?limit=1")[1]["images"][0]["id"] == "upload-1"
    )
    assert api(f"/api/proposals/{added['id']}")[1] == {
        "image": "upload-1",
        "source": None,
        "maskcut": True,
        "proposals": [],
    }
    status, found = api(f"/api/proposals/{added['id']}?run=1")
    expected = [proposals.encode(m, "stub") for m in made.masks]
    assert status == 200 and found["source"] == "maskcut" and made.calls == 1
    assert [(p["area"], p["source"], p["bbox"]) for p in found["proposals"]] == [
        (p.area, "stub", list(p.bbox)) for p in expected
    ]
    assert api(f"/api/proposals/{added['id']}?run=1")[1] == found and made.calls == 1  # cached
    status, result = api("/api/classify", {"image": added["id"], "proposal": 0})
    assert [c["probability"] for c in result["classes"]] == [
        r.probability for r in region.classify(upload, mask=expected[0].decode(), k=5)
    ]
    monkeypatch.setattr(webapp, "MAX_UPLOAD_BYTES", 10)
    assert api("/api/upload?name=big.jpg", b"x" * 11)[0] == 413

    plain = serve(webapp.LabelingApp(region, records))
    assert plain("/api/proposals/" + image_id)[1]["proposals"] == []
    assert plain(f"/api/proposals/{image_id}?run=1") == (
        400,
        {"error": "MaskCut is off: start the app with --maskcut PRESET"},
    )


def test_label_regions_command_names_bad_inputs(demo, tmp_path):
    checkpoint, val = str(demo["checkpoint"]), str(demo["root"] / "scenes" / "val")
    cases = {
        ("--checkpoint", checkpoint): "give --images, --dataset, or both",
        ("--checkpoint", str(demo["folder"] / "README.md"), "--images", val): "README.md: not a labeler checkpoint",
        ("--checkpoint", checkpoint, "--images", str(tmp_path)): "not a known ImageNet layout",
        ("--checkpoint", checkpoint, "--dataset", "org/name"): "pass revision=",
        ("--checkpoint", checkpoint, "--images", val, "--maskcut", "nope"): "unknown MaskCut preset",
    }
    for args, message in cases.items():
        result = CliRunner().invoke(main, ["label-regions", *args])
        assert result.exit_code != 0 and message in result.output, (args, result.output)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        args = ["--checkpoint", checkpoint, "--images", val]
        result = CliRunner().invoke(main, ["label-regions", *args, "--port", str(taken.getsockname()[1])])
    assert result.exit_code != 0 and "Address already in use" in result.output


def test_loopback_hosts():
    assert all(webapp.is_loopback(h) for h in ("127.0.0.1", "::1", "localhost", "127.0.0.2"))
    assert not any(webapp.is_loopback(h) for h in ("0.0.0.0", "192.168.1.2", "::", "example.org"))


WAIT_RANKING = """
const t = document.getElementById('ranking');
return t.dataset.kind === arguments[0] && t.dataset.proposal === arguments[1]
  && t.querySelectorAll('tbody tr').length > 0;
"""
READ_RANKING = """
const t = document.getElementById('ranking');
return {box: t.dataset.box ? JSON.parse(t.dataset.box) : null,
        rows: [...t.querySelectorAll('tbody tr')].map(
          tr => [Number(tr.dataset.class), tr.cells[1].innerText, Number(tr.dataset.probability)])};
"""


def test_page_in_chromium_draws_boxes_picks_proposals_and_uploads(demo, tmp_path):
    browser_or_skip()
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    port = _free_port()
    command = [sys.executable, "-m", "multilabel_imagenet", "label-regions", "--checkpoint", str(demo["checkpoint"])]
    command += ["--dataset", str(demo["folder"]), "--port", str(port)]  # images: the demo's scenes, found from it
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}/"
    region = regions.RegionLabeler(demo["checkpoint"])
    (row,) = [r for r in demo["labels"]["validation"] if r.image_id == "ILSVRC2012_val_00000001"]
    path = demo["root"] / "scenes" / "val" / row.path
    masks, height, width = _masks(demo, row.image_id)
    assert len(masks) >= 2
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.communicate()[0]
            try:
                urllib.request.urlopen(base + "api/info", timeout=5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the server did not start within 120 s"
                time.sleep(0.3)
        with chromium() as driver:
            wait = WebDriverWait(driver, TIMEOUT)
            driver.get(base)
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".image-item")) == 10)
            assert "head.safetensors" in driver.find_element(By.ID, "model").text
            driver.find_element(By.ID, "filter").send_keys("val_")
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".image-item")) == 4)
            driver.find_element(By.CSS_SELECTOR, f'.image-item[data-image-id="{row.image_id}"]').click()
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".proposal")) == len(masks))
            photo = driver.execute_script(
                "const p = document.getElementById('photo');"
                "return [p.naturalWidth, p.naturalHeight, p.clientWidth, p.clientHeight];"
            )
            assert photo[:2] == [width, height]
            scale = width / photo[2]
            canvas = driver.find_element(By.ID, "overlay")

            # a box dragged from (1/4, 1/4) of the picture over a third of it
            ActionChains(driver).move_to_element_with_offset(
                canvas, -photo[2] // 4, -photo[3] // 4
            ).click_and_hold().move_by_offset(photo[2] // 3, photo[3] // 3).release().perform()
            wait.until(lambda d: d.execute_script(WAIT_RANKING, "box", ""))
            shown = driver.execute_script(READ_RANKING)
            x0, y0 = photo[2] / 2 - photo[2] // 4, photo[3] / 2 - photo[3] // 4
            expected_box = [x0 * scale, y0 * scale, (x0 + photo[2] // 3) * scale, (y0 + photo[3] // 3) * scale]
            assert np.allclose(shown["box"], expected_box, atol=2 * scale), (shown["box"], expected_box)
            assert [tuple(r) for r in shown["rows"]] == _expected(region.classify(path, box=shown["box"], k=10))

            # a proposal picked from the list, then one clicked on the picture
            driver.find_element(By.CSS_SELECTOR, '.proposal[data-index="1"]').click()
            wait.until(lambda d: d.execute_script(WAIT_RANKING, "proposal", "1"))
            assert [tuple(r) for r in driver.execute_script(READ_RANKING)["rows"]] == _expected(
                region.classify(path, mask=masks[1], k=10)
            )
            inside = ndimage.distance_transform_edt(masks[0] & ~np.any(masks[1:], axis=0))
            y, x = np.unravel_index(np.argmax(inside), inside.shape)
            ActionChains(driver).move_to_element_with_offset(
                canvas, round(x / scale - photo[2] / 2), round(y / scale - photo[3] / 2)
            ).click().perform()
            wait.until(lambda d: d.execute_script(WAIT_RANKING, "proposal", "0"))
            assert [tuple(r) for r in driver.execute_script(READ_RANKING)["rows"]] == _expected(
                region.classify(path, mask=masks[0], k=10)
            )
            assert driver.find_element(By.CSS_SELECTOR, ".proposal.active").get_attribute("data-index") == "0"
            (stored,) = [p for p in demo["proposals"]["validation"] if p.image_id == row.image_id]
            described = driver.find_element(By.ID, "region").text
            assert described.startswith(f"proposal 1 ({stored.masks[0].source}): {masks[0].sum()} px")
            full_page_screenshot(driver, tmp_path / "label_regions.png")

            # an uploaded file: no stored proposals, a box still classifies
            upload = demo["root"] / "scenes" / "train" / demo["labels"]["train"][0].path
            driver.find_element(By.ID, "upload").send_keys(str(upload))
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, '.image-item.active[data-image-id="upload-1"]'))
            wait.until(lambda d: "no proposals" in d.find_element(By.ID, "proposal-status").text)
            ActionChains(driver).move_to_element_with_offset(canvas, -10, -10).click_and_hold().move_by_offset(
                40, 30
            ).release().perform()
            wait.until(lambda d: d.execute_script(WAIT_RANKING, "box", ""))
            shown = driver.execute_script(READ_RANKING)
            assert [tuple(r) for r in shown["rows"]] == _expected(region.classify(upload, box=shown["box"], k=10))
            assert driver.find_element(By.ID, "error").text == ""
    finally:
        server.send_signal(signal.SIGINT)
        try:
            output = server.communicate(timeout=TIMEOUT)[0]
        except subprocess.TimeoutExpired:
            server.kill()
            output = server.communicate()[0]
    assert f"region labeler at http://127.0.0.1:{port}/" in output
    assert server.returncode == 0, output
