"""External baselines: ONNX Runtime fp32 must match torch fp32; ORT / torchao int8 must stay close."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hf_tiny import bert_inputs, tiny_bert

from slimformer.bench.baselines import build_baselines, first_output
from slimformer.errors import SlimformerError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_ort_and_torchao_baselines(tmp_path):
    model = tiny_bert()
    ids, mask = bert_inputs(seed=5)
    kwargs = {"input_ids": ids, "attention_mask": mask}
    with torch.inference_mode():
        ref = first_output(model(**kwargs))
    found = {b.name: b for b in build_baselines(["ort", "torchao"], model, (), kwargs, tmp_path, threads=1)}
    assert set(found) == {"ort-fp32", "ort-int8", "torchao-int8"}
    # tolerances: fp32 graphs differ only in operation order; int8 by 8-bit rounding (~1 % here)
    for name, max_rel in (("ort-fp32", 1e-4), ("ort-int8", 0.05), ("torchao-int8", 0.05)):
        y = found[name](**kwargs)
        assert y.shape == ref.shape and y.dtype == torch.float32
        rel = float((y - ref).norm() / ref.norm())
        cos = float(F.cosine_similarity(y.flatten(1), ref.flatten(1)).min())
        assert rel <= max_rel and cos >= 0.995, f"{name}: rel {rel:.5f}, cosine {cos:.5f}"
    assert found["ort-int8"].size_mb < found["ort-fp32"].size_mb
    assert all(b.size_mb > 0 for b in found.values())


def test_unknown_baseline_is_refused(tmp_path):
    with pytest.raises(SlimformerError, match="valid baselines: ort, openvino, torchao"):
        build_baselines(["tensorrt"], tiny_bert(), (), {}, tmp_path)
