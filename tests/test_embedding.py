"""The `embedding` task: real MiniLM, size-aware mean pooling, fidelity to the fp32 model."""

import json

import pytest
import torch

from slimformer import io
from slimformer.compress.merge import bipartite_soft_matching
from slimformer.compress.tokens import TomeOptions, apply_tome
from slimformer.tasks import embedding


@pytest.fixture(scope="module")
def texts():
    return embedding.sentences(6)


@pytest.fixture(scope="module")
def minilm():
    return io.load("minilm")


def test_size_weighted_pooling_is_the_mean_over_original_tokens():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 9, 5, generator=g)
    mask = torch.ones(2, 9)
    mask[1, 6:] = 0
    red = bipartite_soft_matching(torch.randn(2, 9, 5, generator=g), 3, mask, torch.zeros(2, 9, dtype=torch.bool))
    merged, sizes, _ = red.apply(x, mask, torch.zeros(2, 9, dtype=torch.bool))
    assert merged.shape[1] < 9
    assert torch.allclose(embedding.mean_pool(merged, sizes), embedding.mean_pool(x, mask), atol=1e-6)


def test_uncompressed_model_is_perfectly_faithful(texts, minilm, tmp_path, monkeypatch):
    monkeypatch.setattr(embedding.paths, "cache_dir", lambda: tmp_path)
    embedding._REFERENCE.clear()
    result = embedding.evaluate(minilm, texts)
    assert result["cosine"] == pytest.approx(1.0, abs=1e-6) and result["retrieval_top1"] == 1.0
    assert len(list(tmp_path.glob("embedding-ref-*.safetensors"))) == 1  # cached on disk
    embedding._REFERENCE.clear()
    assert torch.equal(embedding.reference(texts), embedding.embed(minilm, texts))  # read back from disk


def test_merged_model_uses_token_sizes(texts, minilm):
    apply_tome(minilm, TomeOptions(r=0))
    assert embedding.evaluate(minilm, texts)["cosine"] == pytest.approx(1.0, abs=1e-6)
    apply_tome(minilm, TomeOptions(schedule="keep", keep_ratio=0.5))
    result = embedding.evaluate(minilm, texts)
    assert 0.8 < result["cosine"] < 0.9999
    from slimformer.compress.token_patch import unpatch

    unpatch(minilm)


def test_sentences_and_calibration_are_real_and_disjoint(texts):
    assert len(texts) == 6 and all(len(t.split()) >= 5 for t in texts)
    calib = list(embedding.calibration(n=6, batch=4))
    ids, mask = calib[0]
    assert ids.shape == mask.shape and ids.shape[0] == 4
    decoded = {embedding.tokenizer().decode(row[m.bool()], skip_special_tokens=True) for b in calib
               for row, m in zip(*b, strict=True)}
    assert not decoded & {t.lower() for t in texts}


def test_distillation_sentences_never_overlap_evaluation_or_calibration():
    train = embedding.training_sentences(64)
    assert len(train) == len(set(train)) == 64
    assert not set(train) & (set(embedding.sentences()) | set(embedding.sentences(calibration=True)))
    batches, steps = embedding.training_data(n=64, batch=16)
    first = list(batches(0))
    assert steps == len(first) == 4 and all(labels is None for _, labels in first)
    assert not torch.equal(first[0][0][0], list(batches(1))[0][0][0])  # reshuffled per epoch


def test_fidelity_counts_neighbour_agreement():
    ref = torch.nn.functional.normalize(torch.tensor([[1.0, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0, 0.9, 0.1]]), dim=-1)
    swapped = ref[[0, 2, 1, 3]]
    result = embedding.fidelity(swapped, ref)
    assert result["cosine"] < 1 and result["retrieval_top1"] < 1
    assert embedding.fidelity(ref, ref) == {"cosine": pytest.approx(1.0), "retrieval_top1": 1.0}


def test_benchmark_tiny_mode_writes_results(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent.parent / "benchmarks" / "tokens.py"
    spec = importlib.util.spec_from_file_location("bench_tokens", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    summary = module.run(tiny=True, threads=1, out=tmp_path)
    data = json.loads((tmp_path / "tokens.json").read_text())
    assert {"env", "results"} <= data.keys() and len(data["results"]) >= 6
    assert "Acceptance" in (tmp_path / "tokens.md").read_text()
    assert set(summary) == {"vit_b16_best", "digits_matched", "minilm"}
