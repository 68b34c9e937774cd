"""Fuzzing: generated recipes (inline and YAML), slimformer.json configs and CLI command lines.

Every case must end in a valid result or a clean `SlimformerError` (through the CLI: exit code 2, one
line `error: ...` on stderr, no traceback) within a hard time bound. Most cases run in-process through
`slimformer.cli.main` / the API functions the CLI calls; a few go through real subprocesses to prove the
in-process harness sees what a user sees. Examples are derandomized so CI is reproducible; the counts
go to `_hardening` (see benchmarks/hardening.py).

Task *training* and the non-digits tasks are replaced by fast stand-ins while fuzzing the CLI (the
fuzz targets option parsing, model loading and recipes, not a 40-epoch training run); `distill` is
fuzzed by the parser but not applied, because applying it is a training run.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io as stdio
import json
import os
import subprocess
import sys
import types
import typing
from pathlib import Path

import pytest
import torch
import typer
import yaml
from _hardening import CaseTimeout, bounded, flush, record, record_error, scale
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slimformer import io
from slimformer.cli import app, main
from slimformer.compress.recipe import parse_recipe
from slimformer.compress.steps import all_steps
from slimformer.errors import SlimformerError
from slimformer.models import build_builtin, build_model

CASE_SECONDS = 30
SETTINGS = {"deadline": None, "derandomize": True, "database": None,
            "suppress_health_check": list(HealthCheck)}

STEPS = all_steps()
STEP_NAMES = sorted(STEPS)
APPLIED_STEPS = [n for n in STEP_NAMES if n != "distill"]  # distill = a training run; parsed, not applied


@pytest.fixture(scope="module", autouse=True)
def _tally():
    yield
    for section in ("recipe-inline", "recipe-yaml", "recipe-apply", "config", "cli-inprocess", "cli-subprocess"):
        flush(section)


def outcome(section: str, fn, *args):
    """Run one case under the time bound; return its result or the SlimformerError, record which."""
    try:
        with bounded(CASE_SECONDS):
            result = fn(*args)
    except SlimformerError as e:
        assert "\n" not in str(e).strip(), f"multi-line error: {e}"
        record_error(section, str(e))
        return e
    except CaseTimeout:
        record(section, "timeout")
        raise
    except BaseException:
        record(section, "crash")
        raise
    record(section, "ok")
    return result


# ------------------------------------------------------------------------------------ value strategies

JUNK = st.text(alphabet=list("abxz019_-.:=,+/ \t%é\x00{}[]'\"!&*#\\"), max_size=14)
NASTY_NUMBERS = ["0", "1", "-1", "0.5", "1.5", "-0.0", "1e309", "nan", "inf", "-inf", "1e-400", "9" * 5000,
                 "0x10", "1_000", "½", "٣", "2147483648", "18446744073709551617", "true", "no", "None", ""]
SCALAR_TEXT = st.one_of(st.integers(-10**6, 10**6).map(str), st.sampled_from(NASTY_NUMBERS),
                        st.floats(allow_nan=True, allow_infinity=True).map(repr), JUNK)
JSON_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.sampled_from([0, -1, 1, 2**31, 2**63, 10**12]),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.sampled_from(["", "96", "vit", "hf", "../../etc/passwd", "x" * 2000, "model.safetensors"]),
    st.lists(st.integers(-3, 100), max_size=4), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3))


def hint(step: str, field: str):
    return typing.get_type_hints(STEPS[step].options)[field]


def valid_value(tp) -> st.SearchStrategy:
    """Values a user could sensibly write for a field of type `tp` (some still out of range)."""
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return st.sampled_from(typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*[valid_value(a) for a in typing.get_args(tp) if a is not type(None)])
    if origin is list:
        return st.lists(valid_value(typing.get_args(tp)[0]), min_size=1, max_size=4)
    if tp is bool:
        return st.booleans()
    if tp is int:
        return st.integers(-2, 40)
    if tp is float:
        return st.floats(-0.5, 1.5, allow_nan=False)
    return st.text(max_size=6)


@st.composite
def step_options(draw, name: str, as_text: bool):
    fields = [f.name for f in dataclasses.fields(STEPS[name].options)] if name in STEPS else []
    opts = {}
    for _ in range(draw(st.integers(0, 3))):
        if fields and draw(st.integers(0, 4)):
            key = draw(st.sampled_from(fields))
            if draw(st.integers(0, 2)):
                value = draw(valid_value(hint(name, key)))
                if as_text:
                    value = "/".join(map(str, value)) if isinstance(value, list) else str(value)
            else:
                value = draw(SCALAR_TEXT) if as_text else draw(JSON_VALUES)
        else:
            key, value = draw(JUNK), draw(SCALAR_TEXT if as_text else JSON_VALUES)
        opts[key] = value
    return opts


NAMES = st.one_of(st.sampled_from(STEP_NAMES), st.sampled_from(STEP_NAMES), JUNK,
                  st.sampled_from(["none", "INT8", "prune_heads", " tome ", "tome:", ""]))


@st.composite
def inline_recipes(draw, names=NAMES):
    if draw(st.integers(0, 9)) == 0:
        return draw(st.text(max_size=40))
    parts = []
    for _ in range(draw(st.integers(1, 3))):
        name = draw(names)
        opts = draw(step_options(name, as_text=True))
        items = [f"{k}={v}" if draw(st.integers(0, 9)) else k for k, v in opts.items()]
        parts.append(name + (":" + ",".join(items) if items else ""))
    return draw(st.sampled_from(["+", "+", " + ", "++"])).join(parts)


@st.composite
def yaml_docs(draw):
    kind = draw(st.integers(0, 9))
    if kind == 0:  # hand-written hostile or broken YAML
        return draw(st.sampled_from(HOSTILE_YAML))
    if kind == 1:  # any structure at all
        return yaml.safe_dump(draw(st.recursive(JSON_VALUES, lambda c: st.lists(c, max_size=3)
                                                | st.dictionaries(st.text(max_size=5), c, max_size=3),
                                                max_leaves=8)))
    steps = []
    for _ in range(draw(st.integers(0, 3))):
        name = draw(NAMES)
        form = draw(st.integers(0, 5))
        if form == 0:
            steps.append(name)
        elif form == 1:
            steps.append({name: None})
        elif form == 2:
            steps.append({name: draw(JSON_VALUES)})
        elif form == 3:
            steps.append({name: draw(step_options(name, as_text=False)), "extra": 1})
        else:
            steps.append({name: draw(step_options(name, as_text=False))})
    doc = steps if kind == 2 else {"steps": steps}
    if kind == 3:
        doc["name"] = draw(st.text(max_size=8))
    if kind == 4:
        doc[draw(st.text(max_size=6))] = draw(JSON_VALUES)
    text = yaml.safe_dump(doc, allow_unicode=True)
    if kind == 5:  # a write cut short
        text = text[: draw(st.integers(0, len(text)))]
    return text


HOSTILE_YAML = [
    "!!python/object/apply:os.system ['echo pwned > /tmp/slimformer-pwned']\n",
    "steps:\n  - !!python/object/new:subprocess.Popen [['true']]\n",
    "steps: [" * 5000,
    "steps:\n\t- int8\n",
    "steps: {a: 1\n",
    "\ufeffsteps: [tome]\n",
    "--- a\n--- b\n",
    "steps: &a [*a]\n",
    "name: [&a [x,x,x,x,x,x,x,x,x], &b [*a,*a,*a,*a,*a,*a,*a,*a,*a], &c [*b,*b,*b,*b,*b,*b,*b,*b,*b],"
    " &d [*c,*c,*c,*c,*c,*c,*c,*c,*c], &e [*d,*d,*d,*d,*d,*d,*d,*d,*d], &f [*e,*e,*e,*e,*e,*e,*e,*e,*e],"
    " &g [*f,*f,*f,*f,*f,*f,*f,*f,*f], &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]]\nsteps:\n  - tome: *h\n",
    "",
    "null\n",
    "steps:\n  - tome: {r: 99999999999999999999999999999}\n",
]


# ------------------------------------------------------------------------------------ recipes

@settings(max_examples=scale(450), **SETTINGS)
@given(spec=inline_recipes())
def test_inline_recipes(spec):
    result = outcome("recipe-inline", parse_recipe, spec)
    if isinstance(result, list) and result:  # a parsed recipe prints back to one that parses the same
        again = parse_recipe("+".join(str(rs) for rs in result)) if all(
            not isinstance(v, list) for rs in result for v in dataclasses.asdict(rs.options).values()) else result
        assert [rs.to_dict() for rs in again] == [rs.to_dict() for rs in result]


@settings(max_examples=scale(300), **SETTINGS)
@given(text=yaml_docs(), suffix=st.sampled_from([".yaml", ".yml"]))
def test_yaml_recipes(tmp_path_factory, text, suffix):
    path = tmp_path_factory.getbasetemp() / f"fuzz-recipe{suffix}"
    path.write_text(text)
    outcome("recipe-yaml", parse_recipe, str(path))
    assert not Path("/tmp/slimformer-pwned").exists()


@pytest.fixture(scope="module")
def tiny_vit():
    torch.manual_seed(0)
    return build_builtin("vit-tiny").eval()


def digits_like_calibration():
    yield (torch.randn(8, 1, 16, 16, generator=torch.Generator().manual_seed(0)),)


@st.composite
def plausible_recipes(draw):
    """1-2 applicable steps with options of the right type (values may still be out of range)."""
    parts = []
    for name in draw(st.lists(st.sampled_from(APPLIED_STEPS), min_size=1, max_size=2)):
        opts = {}
        for f in dataclasses.fields(STEPS[name].options):
            if draw(st.booleans()):
                value = draw(valid_value(hint(name, f.name)))
                opts[f.name] = "/".join(map(str, value)) if isinstance(value, list) else str(value)
        parts.append(name + (":" + ",".join(f"{k}={v}" for k, v in opts.items()) if opts else ""))
    return "+".join(parts)


@settings(max_examples=scale(15), **SETTINGS)
@given(spec=plausible_recipes())
def test_recipes_applied(tiny_vit, spec):
    """Recipes applied to a ViT (the path `compress` takes): a model that still runs and stays finite,
    or a clean error."""
    from slimformer.compress.recipe import apply_recipe
    from slimformer.compress.registry import StepContext

    def apply():
        steps = parse_recipe(spec)
        model, _ = apply_recipe(copy.deepcopy(tiny_vit), steps, StepContext(calib=digits_like_calibration))
        with torch.inference_mode():
            out = model(torch.randn(3, 1, 16, 16))
        assert out.shape == (3, 10) and torch.isfinite(out).all(), spec
        return model

    outcome("recipe-apply", apply)


# ------------------------------------------------------------------------------------ model configs

TINY = {
    "encoder": ("encoder", {"vocab_size": 64, "max_len": 16, "d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32}),
    "decoder": ("decoder", {"vocab_size": 64, "max_len": 16, "d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32}),
    "seq2seq": ("seq2seq", {"vocab_size": 64, "max_len": 16, "d_model": 16, "n_enc_layers": 1, "n_dec_layers": 1,
                            "n_heads": 2, "d_ff": 32}),
}


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """Small saved model dirs of every architecture, one with a structural recipe (lowrank)."""
    from slimformer.api import compress_model

    root = tmp_path_factory.mktemp("fuzz-models")
    dirs = {"vit": io.save_model(build_builtin("vit-tiny"), root / "vit", extra={"task": "digits"})}
    for name, (arch, cfg) in TINY.items():
        dirs[name] = io.save_model(build_model(arch, cfg), root / name)
    model, record_ = compress_model(build_builtin("vit-tiny"), "lowrank:rank=8")
    dirs["lowrank"] = io.save_model(model, root / "lowrank", recipe=record_)
    return {k: (v, (v / io.META).read_text()) for k, v in dirs.items()}


def json_paths(node, prefix=()):
    """Every path into a JSON tree (dict keys / list indices), the root excluded."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for k, v in items:
        yield (*prefix, k)
        if k != "versions":
            yield from json_paths(v, (*prefix, k))


@st.composite
def meta_mutations(draw, meta_text: str):
    """A slimformer.json with 1-3 values replaced, deleted or retyped, or its text damaged."""
    if draw(st.integers(0, 7)) == 0:
        kind = draw(st.integers(0, 3))
        if kind == 0:
            return meta_text[: draw(st.integers(0, len(meta_text)))]
        if kind == 1:
            i = draw(st.integers(0, len(meta_text) - 1))
            return meta_text[:i] + draw(st.text(min_size=1, max_size=3)) + meta_text[i + 1:]
        if kind == 2:
            return draw(st.sampled_from(["[" * 100000, "{}", "null", '{"format": "slimformer-model/1"}',
                                         '{"a": ' + "1" * 5000 + "}", "\xff\xfe"]))
        return json.dumps(draw(JSON_VALUES))
    meta = json.loads(meta_text)
    for _ in range(draw(st.integers(1, 3))):
        paths = list(json_paths(meta))
        path = draw(st.sampled_from(paths))
        parent = meta
        for k in path[:-1]:
            parent = parent[k]
        op = draw(st.integers(0, 5))
        if op == 0 and isinstance(parent, dict):
            del parent[path[-1]]
        elif op == 1:
            parent[path[-1]] = draw(st.sampled_from(["hf", "vit", "encoder", "mamba"])) if path == ("architecture",) \
                else {"hf_config": {"model_type": "bert", "hidden_size": draw(st.integers(1, 64))},
                      "hf_class": "BertModel"}
        else:
            parent[path[-1]] = draw(JSON_VALUES)
    return json.dumps(meta)


@settings(max_examples=scale(260), **SETTINGS)
@given(data=st.data(), which=st.sampled_from(["vit", "encoder", "decoder", "seq2seq", "lowrank"]))
def test_model_configs(model_dirs, data, which):
    path, original = model_dirs[which]
    text = data.draw(meta_mutations(original))
    try:
        (path / io.META).write_text(text, errors="surrogateescape")
        outcome("config", io.load_model_dir, path)
    finally:
        (path / io.META).write_text(original)


# ------------------------------------------------------------------------------------ CLI

RUNNABLE = {"models", "train", "evaluate", "compress"}  # run for real (with task stand-ins), others: parse only


def cli_commands() -> dict[str, tuple[list[str], object, dict]]:
    """Every (sub)command: its words (`parallel serve` -> ["parallel", "serve"]), click command, type hints."""
    out = {}

    def walk(words, cmd):
        out[" ".join(words)] = (words, cmd, typing.get_type_hints(cmd.callback) if cmd.callback else {})
        for name, sub in getattr(cmd, "commands", {}).items():
            walk([*words, name], sub)

    for name, cmd in typer.main.get_command(app).commands.items():
        walk([name], cmd)
    return out


COMMANDS = cli_commands()
MODEL_REFS = ["good", "corrupt", "pickled", "nodir", "vit-tiny", "good/model.safetensors", "pickled/pytorch_model.bin",
              ".good.x.partial", "recipe.yaml", ""]
OUT_REFS = ["out1", "sub/dir/out2", "good", "recipe.yaml/x", "/proc/nope/x", "", ".", "res.json"]


def value_for(name: str, tp) -> st.SearchStrategy:
    if name == "model":
        return st.one_of(st.sampled_from(MODEL_REFS), JUNK)
    if name == "task":
        return st.one_of(st.sampled_from(["digits", "embedding", "fashion", "translation"]), JUNK)
    if name == "recipe":
        return st.one_of(inline_recipes(names=st.one_of(st.sampled_from(APPLIED_STEPS), JUNK)),
                         st.sampled_from(["recipe.yaml", "bad.yaml", "missing.yaml", "none"]))
    if name in ("out", "json_out"):
        return st.one_of(st.sampled_from(OUT_REFS), JUNK)
    if name == "threads":
        return st.sampled_from(["1", "2", "0", "-1", "100000000", "x", ""])
    if name == "epochs":
        return st.sampled_from(["1", "2", "0", "-5", "1e3", "x", "99999999999999999999999"])
    if tp in (int, float):
        return st.one_of(st.sampled_from(NASTY_NUMBERS[:12]), st.integers(-3, 10).map(str))
    return st.one_of(JUNK, st.sampled_from(NASTY_NUMBERS))


@st.composite
def argvs(draw):
    pick = draw(st.integers(0, 9))
    name = draw(JUNK) if pick == 0 else draw(st.sampled_from(sorted(COMMANDS) if pick < 4 else sorted(RUNNABLE)))
    if name not in COMMANDS:
        return [name, *draw(st.lists(JUNK, max_size=3))]
    words, cmd, hints = COMMANDS[name]
    args = list(words)
    for param in draw(st.permutations(cmd.params)):
        if param.required and draw(st.integers(0, 9)) == 0 or not param.required and draw(st.booleans()):
            continue  # leave it out (a missing required one must be named)
        value = draw(value_for(param.name, hints.get(param.name)))
        if param.param_type_name == "argument":
            args.append(value)
        elif getattr(param, "is_flag", False):
            args.append(param.opts[0])
        else:
            args += [param.opts[0], value]
    if draw(st.integers(0, 5)) == 0:
        args.insert(draw(st.integers(len(words), len(args))),
                    draw(st.sampled_from(["--nope", "-x", "--help", "--", "-"])))
    if name not in RUNNABLE and "--help" not in args:
        args.append("--zz-not-an-option")  # heavy commands (bench, demo, parallel...): parse errors only
    return args


@pytest.fixture(scope="module")
def cli_workdir(tmp_path_factory):
    """A cwd holding the refs the CLI fuzz names: a good model dir, a corrupt one, a pickled HF dir, recipes."""
    root = tmp_path_factory.mktemp("fuzz-cli")
    good = io.save_model(build_builtin("vit-tiny"), root / "good", extra={"task": "digits"})
    corrupt = io.save_model(build_builtin("vit-tiny"), root / "corrupt")
    weights = corrupt / io.WEIGHTS
    weights.write_bytes(weights.read_bytes()[:4000])
    (root / "pickled").mkdir()
    (root / "pickled" / "config.json").write_text("{}")
    (root / "pickled" / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    (root / ".good.x.partial").mkdir()
    (root / "recipe.yaml").write_text("steps:\n  - prune-heads: {ratio: 0.25}\n")
    (root / "bad.yaml").write_text("steps: [prune-heads: {ratio: 2}]\n")
    return root, good


FIXTURE_FILES = ["good/model.safetensors", "corrupt/slimformer.json", "pickled/pytorch_model.bin", "recipe.yaml",
                 "bad.yaml"]


class StandInTask(types.SimpleNamespace):
    """A task whose training is instant: the CLI fuzz exercises options and I/O, not a training run."""


def stand_in(real_get_task):
    from slimformer.tasks import TASKS

    def get_task(name):
        if name not in TASKS:
            return real_get_task(name)  # the real error message for unknown tasks

        def train(out=None, epochs=1, seed=0, **_):
            model = build_builtin("vit-tiny")
            if out is not None:
                io.save_model(model, out, extra={"task": name})
            return model

        if name == "digits":
            real = real_get_task(name)
            return StandInTask(train=train, evaluate=real.evaluate, calibration=real.calibration,
                               training_data=real.training_data)
        return StandInTask(train=train, evaluate=lambda model: {"metric": 0.0}, calibration=None)

    return get_task


@pytest.fixture()
def in_process_cli(cli_workdir, monkeypatch):
    import slimformer.tasks

    root, _ = cli_workdir
    monkeypatch.chdir(root)
    real = slimformer.tasks.get_task
    fake = stand_in(real)
    for mod in [m for n, m in list(sys.modules.items()) if n.startswith("slimformer")]:
        if getattr(mod, "get_task", None) is real:
            monkeypatch.setattr(mod, "get_task", fake)
    return root


def run_in_process(argv: list[str]) -> tuple[int, str, str]:
    out, err = stdio.StringIO(), stdio.StringIO()
    threads = torch.get_num_threads()
    code = None
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        torch.set_num_threads(threads)
    return code, out.getvalue(), err.getvalue()


def check_cli_result(section: str, argv, code, stdout, stderr) -> None:
    if code == 0:
        record(section, "ok")
        return
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert "Traceback" not in stderr, f"{argv}: traceback\n{stderr}"
    if code == 2 and not lines and "Usage" in stdout:  # `slimformer` with no command prints help, exit 2
        record(section, "ok")
        return
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert code == 2 and len(errors) == 1, f"{argv}: exit {code}, stderr:\n{stderr}"
    record_error(section, errors[0])


@settings(max_examples=scale(260), **SETTINGS)
@given(argv=argvs())
def test_cli_in_process(in_process_cli, argv):
    try:
        with bounded(CASE_SECONDS):
            code, stdout, stderr = run_in_process(argv)
    except CaseTimeout:
        record("cli-inprocess", "timeout")
        raise
    except BaseException:
        record("cli-inprocess", "crash")
        raise
    check_cli_result("cli-inprocess", argv, code, stdout, stderr)
    root = in_process_cli
    assert Path.cwd() == root and all((root / f).exists() for f in FIXTURE_FILES), f"{argv} removed a file"
    if argv[:1] in (["train"], ["compress"]) and "good" in argv:  # it may have been replaced: by a model
        io.load_model_dir(root / "good")


def test_cli_subprocess(cli_workdir):
    """A sample of the same generator through real `python -m slimformer` processes (real tasks, so only
    command lines that fail before training or are cheap)."""
    root, _ = cli_workdir
    examples = []

    @settings(max_examples=scale(60), **SETTINGS)
    @given(argv=argvs())
    def collect(argv):
        broken_model = any(a in ("corrupt", "pickled", "nodir", ".good.x.partial") for a in argv)
        if any("\x00" in a for a in argv):  # an OS argv cannot carry NUL (the in-process fuzz covers it)
            return
        if argv[0] not in RUNNABLE or broken_model:
            examples.append(argv)

    collect()
    picked = examples[:: max(1, len(examples) // scale(3))][: scale(3)]
    picked += [["evaluate", "corrupt", "--task", "digits"], ["compress", "pickled", "--recipe", "x", "--out", "o"],
               ["train", "digits", "--out", "o", "--threads", "100000000"]]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    for argv in picked:
        proc = subprocess.run([sys.executable, "-m", "slimformer", *argv], capture_output=True, text=True,
                              timeout=120, cwd=root, env=env)
        check_cli_result("cli-subprocess", argv, proc.returncode, proc.stdout, proc.stderr)
