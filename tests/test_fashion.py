"""Fashion-MNIST: the loader on the real Debian files, bad files, the task on a small subset, resume."""

import gzip
import struct

import pytest
import torch

from slimformer.data import fashion as data
from slimformer.errors import SlimformerError
from slimformer.tasks import checkpoint, fashion

pytestmark = pytest.mark.usefixtures("one_thread")



def test_loader_parses_real_files():
    train, test = data.load_split("train"), data.load_split("test")
    assert train.images.shape == (60_000, 28, 28) and test.images.shape == (10_000, 28, 28)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert train.labels.bincount().tolist() == [6000] * 10  # balanced classes, labels exactly 0..9
    assert test.labels.bincount().tolist() == [1000] * 10
    assert 0.2 < train.images.float().mean() / 255 < 0.4  # real images, not zeros


def write_idx(path, magic, dims, payload=None):
    body = payload if payload is not None else bytes(int(torch.tensor(dims).prod()))
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(f">{1 + len(dims)}I", magic, *dims) + body)


def fake_split(root, n=60_000, image_magic=2051, truncate=False):
    root.mkdir(exist_ok=True)
    payload = bytes(n * 28 * 28 - (1 if truncate else 0))
    write_idx(root / "train-images-idx3-ubyte.gz", image_magic, [n, 28, 28], payload)
    write_idx(root / "train-labels-idx1-ubyte.gz", 2049, [n])


@pytest.mark.parametrize("kwargs, message", [
    ({"image_magic": 2049}, "magic number 2049, expected 2051"),
    ({"truncate": True}, "bytes, header"),
    ({"n": 10}, "10 images and 10 labels, expected 60000"),
])
def test_bad_files_are_named(tmp_path, kwargs, message):
    fake_split(tmp_path / "d", **kwargs)
    with pytest.raises(SlimformerError, match=message):
        data.load_split("train", tmp_path / "d")


def test_missing_data_names_the_package(tmp_path):
    with pytest.raises(SlimformerError, match="apt-get install dataset-fashion-mnist") as err:
        data.load_split("test", tmp_path)
    assert "\n" not in str(err.value)


def test_cli_missing_data_is_one_line(tmp_path, capsys):
    from slimformer.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["train", "fashion", "--out", str(tmp_path / "m"), "--data-dir", str(tmp_path)])
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "apt-get install dataset-fashion-mnist" in lines[0]
    assert not (tmp_path / "m").exists()


def test_one_train_step_lowers_the_loss():
    """The model learns from real images: a few steps on one batch reduce its loss."""
    from slimformer.models import build_builtin

    d = fashion.load_data()
    model = build_builtin(fashion.MODEL).train()
    x, y = d.x_train[:64], d.y_train[:64]
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert torch.isfinite(torch.tensor(losses)).all()
    assert losses[-1] < losses[0] - 0.2


def test_augment_flips_some_images_and_keeps_the_rest():
    d = fashion.load_data()
    x = d.x_train[:64]
    out = fashion.augment(x, torch.Generator().manual_seed(0), shift=0)
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert (flipped | kept).all() and 10 < int(flipped.sum()) < 54


def test_augment_shifts_by_whole_pixels_within_the_limit():
    """Every augmented image is its original (or mirror) moved by at most 2 pixels, background-filled."""
    d = fashion.load_data()
    x = d.x_train[:32]
    out = fashion.augment(x, torch.Generator().manual_seed(1), shift=2)
    fill = float(x.min())
    moved = 0
    for original, got in zip(x, out, strict=True):
        matches = []
        for image in (original, original.flip(-1)):
            padded = torch.nn.functional.pad(image, (2, 2, 2, 2), value=fill)
            matches += [(dy, dx) for dy in range(5) for dx in range(5)
                        if torch.equal(padded[:, dy:dy + 28, dx:dx + 28], got)]
        assert matches, "output is not a shifted copy of its input"
        moved += (2, 2) not in matches
    assert moved > 16  # most images moved (1 in 25 draws no shift)


def test_task_on_subset_learns_and_resumes(tmp_path, monkeypatch):
    """Two epochs on 512 images beat chance; an interruption after epoch 1 resumes to the same weights."""
    full = fashion.train(out=tmp_path / "full", epochs=2, subset=512, batch=64)
    acc = fashion.evaluate(full, limit=1000)["accuracy"]
    assert acc > 0.2, acc  # chance is 0.1
    assert not checkpoint.checkpoint_dir(tmp_path / "full").exists()  # removed once the model is saved

    real_save = fashion.save_checkpoint

    def save_then_crash(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(fashion, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        fashion.train(out=tmp_path / "resumed", epochs=2, subset=512, batch=64)
    assert checkpoint.checkpoint_dir(tmp_path / "resumed").exists()
    assert not (tmp_path / "resumed").exists()
    monkeypatch.setattr(fashion, "save_checkpoint", real_save)
    with pytest.raises(SlimformerError, match="other settings"):
        fashion.train(out=tmp_path / "resumed", epochs=2, subset=512, batch=32)
    resumed = fashion.train(out=tmp_path / "resumed", epochs=2, subset=512, batch=64)
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)


def test_benchmark_tiny_runs_and_reports(tmp_path):
    """benchmarks/fashion.py end to end on a model trained in seconds: records, ratios and verdicts."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent.parent / "benchmarks" / "fashion.py"
    spec = importlib.util.spec_from_file_location("bench_fashion", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    model = bench.tiny_model(tmp_path / "m")
    report = bench.run(model, tiny=True, threads=1, batch=16, rounds=2, baselines=[],
                       recipes=["tome:r=8", "no-such-step"])
    names = [r["name"] for r in report["results"]]
    assert names == ["fp32", "tome:r=8"] and "no-such-step" in report["skipped"]
    fp32, tome = report["results"]
    assert fp32["speedup"] == 1.0 and fp32["drop_points"] == 0.0
    # the speedup is the measured throughput ratio, not a number from elsewhere
    assert tome["speedup"] == pytest.approx(tome["throughput"] / fp32["throughput"], rel=1e-9)
    assert tome["drop_points"] == pytest.approx((fp32["metrics"]["accuracy"] - tome["metrics"]["accuracy"]) * 100)
    assert 0.0 <= tome["metrics"]["accuracy"] <= 1.0 and tome["latency_ms"]["p50"] > 0
    assert report["acceptance"]["tome_int8"] is None and not report["acceptance"]["fp32_pass"]
    text = bench.markdown(report, {"versions": {"torch": "x"}, "cpu": "y"})
    assert "| tome:r=8 |" in text and "skipped `no-such-step`" in text
