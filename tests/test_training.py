"""Training reduces the loss, and the trained digits model saves and reloads exactly."""

import torch

from slimformer import io
from slimformer.tasks import digits


def test_training_reduces_loss(tmp_path):
    from slimformer.models import build_builtin
    from slimformer.tasks.training import TrainConfig, classification_loss, fit

    data = digits.load_data()
    model = build_builtin("vit-tiny")
    x, y = data.x_train[:128], data.y_train[:128]
    loss_fn = classification_loss()
    with torch.no_grad():
        before = loss_fn(model(x), y)[0].item()
    fit(model, lambda epoch: [((x[i:i + 32],), y[i:i + 32]) for i in range(0, 128, 32)], 4, loss_fn,
        TrainConfig(epochs=30, lr=3e-3, warmup_frac=0.0))
    with torch.no_grad():
        after = loss_fn(model(x), y)[0].item()
    assert after < 0.75 * before, (before, after)


def test_digits_split_is_fixed():
    data = digits.load_data()
    assert len(data.y_train) == 1437 and len(data.y_test) == 360
    assert data.x_train.shape[1:] == (1, 16, 16)


def test_trained_model_round_trip(digits_model_dir):
    model = io.load_model_dir(digits_model_dir)
    again = io.load_model_dir(digits_model_dir)
    x = digits.load_data().x_test[:16]
    assert torch.equal(model(x), again(x))
    assert io.read_meta(digits_model_dir)["task"] == "digits"
    assert 0.0 <= digits.evaluate(model)["accuracy"] <= 1.0


def test_data_first_loaded_in_inference_mode_still_trains(monkeypatch):
    monkeypatch.setattr(digits, "_CACHE", None)
    with torch.inference_mode():
        data = digits.load_data()
    model = torch.nn.Linear(256, 10)
    model(data.x_train[:4].flatten(1)).sum().backward()  # would raise on inference tensors
