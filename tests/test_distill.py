"""Distillation: the losses match their definitions, a short fine-tune moves a pruned student toward its
teacher (labelled and unlabelled data), and the distilled model dir reloads identically."""

import types

import pytest
import torch
import torch.nn.functional as F

from slimformer import api, io
from slimformer.api import compress_model
from slimformer.compress import distill as distill_mod
from slimformer.compress.distill import embedding_loss, kd_loss, mean_pool
from slimformer.errors import SlimformerError
from slimformer.models import EncoderConfig, ViTConfig, build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_vit():
    return build_model("vit", ViTConfig(image_size=8, patch_size=2, in_channels=1, n_classes=5, d_model=32,
                                        n_layers=2, n_heads=4, d_ff=64))


def test_losses_match_definitions():
    s, t = torch.randn(6, 5), torch.randn(6, 5)
    p_t = F.softmax(t / 2, -1)
    naive = (p_t * (p_t.log() - F.log_softmax(s / 2, -1))).sum(-1).mean() * 4
    torch.testing.assert_close(kd_loss(s, t, 2.0), naive)
    assert kd_loss(t, t, 2.0).abs() < 1e-6
    h, mask = torch.randn(2, 4, 3), torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    torch.testing.assert_close(mean_pool(h, mask), torch.stack([h[0, :2].mean(0), h[1].mean(0)]))
    assert embedding_loss(h, h, mask).abs() < 1e-6 and embedding_loss(h, -h, mask) > 2


def agreement(student, teacher, x) -> float:
    with torch.no_grad():
        return float((student(x).argmax(-1) == teacher(x).argmax(-1)).float().mean())


def test_labelled_distill_recovers_teacher(monkeypatch, tmp_path):
    """Pruned half of a ViT's heads and neurons, then distill on the teacher's own labels: the student's
    agreement with the teacher on held-out inputs rises, and the result reloads identically."""
    torch.manual_seed(0)
    teacher = tiny_vit()
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(32, 1, 8, 8, generator=g) for _ in range(4)]
    with torch.no_grad():
        batches = [((x,), teacher(x).argmax(-1)) for x in xs]
    task = types.SimpleNamespace(training_data=lambda: ((lambda epoch: iter(batches)), len(batches)))
    monkeypatch.setattr(distill_mod, "get_task", lambda name: task)
    monkeypatch.setattr(api, "get_task", lambda name: task)
    held_out = torch.randn(256, 1, 8, 8, generator=g)
    pruned, _ = compress_model(_copy(teacher), "prune-heads:ratio=0.5,score=weight+prune-ffn:ratio=0.5,"
                                               "score=weight")
    before = agreement(pruned, teacher, held_out)
    student, record = compress_model(_copy(teacher), "prune-heads:ratio=0.5,score=weight+prune-ffn:ratio=0.5,"
                                     "score=weight+distill:epochs=15,lr=0.003,hidden=0.5", task="fake")
    after = agreement(student, teacher, held_out)
    assert after > before + 0.1, (before, after)
    assert record[2]["state"] == {}
    x = held_out[:8]
    with torch.no_grad():
        expected = student(x)
    loaded = io.load_model_dir(io.save_model(student, tmp_path / "m", recipe=record))
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)


def _copy(model):
    import copy

    return copy.deepcopy(model)


def test_unlabelled_distill_matches_embeddings():
    """No labels (the embedding regime): distilling on calibration inputs lowers the embedding loss."""
    torch.manual_seed(0)
    teacher = build_model("encoder", EncoderConfig(vocab_size=200, max_len=16, d_model=32, n_layers=2, n_heads=4,
                                                   d_ff=64))
    g = torch.Generator().manual_seed(2)
    calib = [(torch.randint(3, 200, (16, 12), generator=g), torch.ones(16, 12, dtype=torch.bool)) for _ in range(4)]

    from slimformer.compress.recipe import apply_recipe, parse_recipe
    from slimformer.compress.registry import StepContext

    def loss_of(model):
        with torch.no_grad():
            return float(sum(embedding_loss(model(*b), teacher(*b), b[1]) for b in calib))

    pruned, _ = apply_recipe(_copy(teacher), parse_recipe("prune-ffn:ratio=0.75,score=weight"))
    before = loss_of(pruned)
    ctx = StepContext(calib=lambda: iter(calib), teacher=teacher)
    student, _ = apply_recipe(pruned, parse_recipe("distill:epochs=10,lr=0.003"), ctx)
    assert loss_of(student) < 0.5 * before


def test_errors():
    with pytest.raises(SlimformerError, match=r"'alpha' of step 'distill' must be in \[0, 1\]"):
        compress_model(tiny_vit(), "distill:alpha=2")
    with pytest.raises(SlimformerError, match="step 'distill' needs data"):
        compress_model(tiny_vit(), "prune-heads:ratio=0.5,score=weight+distill")
    from slimformer.compress.recipe import apply_recipe, parse_recipe

    with pytest.raises(SlimformerError, match="needs the uncompressed model as teacher"):
        apply_recipe(tiny_vit(), parse_recipe("distill"))


def test_prune_distill_benchmark_tiny(tmp_path):
    """benchmarks/prune_distill.py --tiny runs end to end and writes the contract's JSON and a table."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).parent.parent / "benchmarks" / "prune_distill.py"
    spec = importlib.util.spec_from_file_location("prune_distill", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    report = bench.main(["--tiny", "--threads", "1", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "prune_distill.json").read_text())
    assert set(data) == {"env", "results"} and len(data["results"]) == 4
    unpruned, pruned, distilled = report["results"]
    assert pruned["n_params"] < unpruned["n_params"] and pruned["size_mb"] < unpruned["size_mb"]
    assert report["summary"]["reload_identical"]
    assert "| pruned + distilled |" in (tmp_path / "prune_distill.md").read_text()
