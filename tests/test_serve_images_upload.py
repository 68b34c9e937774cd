"""`/v1/classify` with a PNG / JPEG upload over real HTTP on 127.0.0.1: the server converts, resizes and
normalizes the image as the model dir says it was trained (here the fashion task's `normalize` metadata),
so the answer equals the model run on the same pixels computed here, and equals the JSON array form;
anything that is not a PNG / JPEG gets a 422 naming `file`. One server subprocess (a random `vit-tiny`
saved as a fashion model dir, 1 worker) serves the module."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from test_serve_http import assert_error, free_port, post, wait_healthy

from slimformer import io as model_io

MEAN, STD = 0.286, 0.353
ROUTE = "/v1/classify"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from slimformer.models import build_builtin

    torch.manual_seed(0)
    model = build_builtin("vit-tiny").eval()  # 16 x 16, 1 channel, 10 classes
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0, 0.15)
    out = tmp_path_factory.mktemp("upload") / "fashion-vit"
    return model_io.save_model(model, out, extra={"task": "fashion", "normalize": {"mean": MEAN, "std": STD}})


@pytest.fixture(scope="module")
def base(model_dir):
    port = free_port()
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-m", "slimformer", "serve", str(model_dir), "--port", str(port),
                             "--workers", "1", "--threads", "1"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, 120)
        yield url
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0


def encoded(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def send(base: str, data: bytes, name: str = "image.png", **fields: str) -> httpx.Response:
    return httpx.post(f"{base}{ROUTE}", files={"file": (name, data)}, data=fields, timeout=30)


def labels(r: httpx.Response) -> list[dict]:
    assert r.status_code == 200, r.text
    (row,) = r.json()["data"]
    return row["labels"]


def test_png_upload_is_normalized_as_in_training_and_equals_the_array_form(base, model_dir):
    pixels = np.random.default_rng(0).integers(0, 256, (16, 16), dtype=np.uint8)
    x = torch.from_numpy((pixels / 255 - MEAN) / STD).float()[None, None]  # [1, 1, 16, 16], as fashion trains
    with torch.inference_mode():
        probs = torch.softmax(model_io.load(model_dir)(x), -1)[0]
    top = torch.topk(probs, 3)
    got = labels(send(base, encoded(Image.fromarray(pixels, "L"), "PNG"), top_k="3"))
    assert [g["index"] for g in got] == top.indices.tolist()
    np.testing.assert_allclose([g["score"] for g in got], top.values.numpy(), atol=1e-5)
    assert got[0]["label"] in ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                               "Sneaker", "Bag", "Ankle boot")
    array = labels(post(base, ROUTE, {"input": x[0].tolist(), "top_k": 3}))
    assert [a["index"] for a in array] == [g["index"] for g in got]
    np.testing.assert_allclose([a["score"] for a in array], [g["score"] for g in got], atol=1e-5)
    info = httpx.get(f"{base}/info", timeout=10).json()["upload_preprocess"]
    assert info["mean"] == [MEAN] and info["std"] == [STD] and "metadata" in info["source"]


def test_rgb_jpeg_is_converted_to_the_models_channels_and_resized(base):
    rgb = np.random.default_rng(1).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    data = encoded(Image.fromarray(rgb, "RGB"), "JPEG")
    gray = Image.open(io.BytesIO(data)).convert("L").resize((16, 16), Image.Resampling.BILINEAR)
    x = (np.asarray(gray, dtype=np.float32) / 255 - MEAN) / STD
    got = labels(send(base, data, "photo.jpg"))
    assert len(got) == 5  # top_k defaults to 5
    expected = labels(post(base, ROUTE, {"input": x[None].tolist()}))
    assert [g["index"] for g in got] == [e["index"] for e in expected]
    np.testing.assert_allclose([g["score"] for g in got], [e["score"] for e in expected], atol=1e-4)


def test_what_is_not_a_png_or_jpeg_is_a_422_naming_file(base):
    png = encoded(Image.new("L", (16, 16), 128), "PNG")
    assert_error(send(base, b"not an image at all"), 422, "file", "not a PNG or JPEG image")
    assert_error(send(base, encoded(Image.new("L", (16, 16)), "GIF"), "a.gif"), 422, "file", "not a PNG or JPEG")
    noise = encoded(Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16), dtype=np.uint8)), "PNG")
    assert_error(send(base, noise[:len(noise) // 2]), 422, "file", "truncated")
    assert_error(send(base, b""), 422, "file", "'file' is empty")
    assert_error(send(base, png, top_k="three"), 422, "top_k", "must be int")
    assert_error(send(base, png, top_k="11"), 422, "top_k", "[1, 10]")
    r = httpx.post(f"{base}{ROUTE}", files={"image": ("a.png", png)}, timeout=30)
    assert_error(r, 422, "file", "'file' is required")
    assert len(labels(send(base, png))) == 5  # and it still answers
