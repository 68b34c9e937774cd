"""docs/python-api.md runs as written: every python block, in order, in one namespace, in a scratch dir
(the examples use built-in tiny models and MiniLM, so this stays fast)."""

import os
import re
from pathlib import Path

import pytest

DOC = Path(__file__).parent.parent / "docs" / "python-api.md"


def blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_python_api_doc_runs(tmp_path, monkeypatch, capsys):
    code = blocks(DOC.read_text())
    assert len(code) >= 6
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for i, block in enumerate(code):
        try:
            exec(compile(block, f"{DOC.name} block {i + 1}", "exec"), namespace)  # noqa: S102 (our own docs)
        except Exception as e:  # name the block that broke
            pytest.fail(f"{DOC.name} block {i + 1} failed: {type(e).__name__}: {e}\n{block}")
    out = capsys.readouterr().out
    assert "['prune-heads', 'tome', 'int8']" in out and "put 'int8' last" in out
    assert sorted(os.listdir(tmp_path)) == ["recipe.yaml", "vit-lowrank", "vit-pruned-tome-int8", "vit-small"]


def test_contract_doc_is_linked():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert "docs/contract.md" in readme and "docs/python-api.md" in readme
    assert (DOC.parent / "contract.md").is_file()
