"""README opens with the install+demo command and the test command, and CI runs exactly those."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    lines = (ROOT / "README.md").read_text().splitlines()
    blocks, inside = [], False
    for line in lines:
        if line.startswith("```"):
            inside = not inside
            continue
        if inside:
            blocks.append(line)
        if len(blocks) == 2:
            break
    return blocks


def test_readme_opens_with_two_commands():
    install, test = readme_commands()
    assert "pip install" in install and "slimformer demo" in install
    assert "pytest" in test


def test_ci_runs_readme_commands_in_order():
    install, test = readme_commands()
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert install in ci and test in ci
    assert ci.index(install) < ci.index(test)
