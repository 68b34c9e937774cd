"""`slimformer search`: the fastest recipe whose task metric stays within a budget of fp32.

The space comes from the registry: every step says its role and knob (compress/registry.py), and this
module knows no step by name. Structural and token steps sweep their knob from mild to aggressive (a
token knob may be a share of the token count, or for text the share of each row kept); precision steps
are switches, tried as they are, compiled, and with calibrated activation scales where they offer them;
flags join the others. The space is explored cheapest-first and pruned where monotonicity says nothing
better can follow:

1. Singles: each step alone, mild to aggressive, in the steps' priority order. The metric is computed
   before latency (it is what usually rules a candidate out); a step stops at the first setting over
   budget, or when a more aggressive setting is no faster (the rest of that branch is dominated). A
   structural step that breaks the budget gets one try with the recovery step (distillation) after it,
   where the task can train. Stage 1 gets SINGLES_SHARE of the exploring budget, so combinations always
   get the rest. Token steps, flags and precision switches pass on every setting inside the budget,
   whatever their speed alone: on a small model token bookkeeping costs more than it saves in eager
   mode, not compiled, and compiling pays most once pruning has made the model small.
2. Combinations: steps in order of their best single speedup (token steps last, so they join states
   that already hold a compiled precision step) extend a small beam of recipes kept on the (latency,
   drop) Pareto front; each extension tries that step's feasible settings from the most aggressive down
   and keeps the first two that fit the budget. The precision switches (a recipe holds one) form one
   group here, tried fastest first. Combinations whose estimated latency (product of single-step
   ratios) gains nothing are never built (token steps and flags are always built and measured).
3. Final: the front, the fastest few candidates inside the budget (exploring timed each one only
   briefly), fp32 and the external baselines are measured together by the bench runner
   (interleaved, same inputs, peak memory per fresh process) and the best recipe is written as YAML
   beside results.json, front.json and the report.

Every evaluated candidate is cached in OUT/cache.json (keyed by model, task, shapes, threads), so a
rerun of the same command resumes where it stopped.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import logging
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from . import atomic, io
from .api import compress_model, recipe_of
from .bench.inputs import example_inputs
from .bench.timing import interleaved, measure
from .compress.recipe import parse_recipe
from .compress.registry import Knob, Step
from .compress.steps import all_steps
from .errors import SlimformerError
from .families import family_of
from .tasks import TASKS, get_task

log = logging.getLogger(__name__)

PRECISION = "precision"  # the precision steps' combined group in stage 2 (a recipe holds one)
EXPLORED = ("structural", "tokens", "precision", "flag")  # roles the search sweeps (see compress/registry.py)


@dataclass
class SearchConfig:
    model: str
    task: str
    max_drop: float
    out: Path
    batch: int | None = None
    seq_len: int = 128
    threads: int = 2
    baselines: list[str] = field(default_factory=lambda: ["ort", "torchao"])
    distill: bool = True
    # soft limit on exploring, None for none; the final measurement comes after. The default keeps a
    # MiniLM search (batch 32 x 128, 2 cores) within ~15 min in all.
    budget_s: float | None = 420.0
    beam: int = 4
    final_rounds: int = 60  # at most; as many as fit in final_seconds (small models get many, for stable p50s)
    steps: list[str] | None = None  # restrict the families explored (default: every registered step)
    quick_seconds: float = 2.0  # timing per candidate while exploring (the final measurement is longer)
    final_front: int = 4  # fastest front recipes (and fastest in-budget ones) measured in the final run
    final_seconds: float = 120.0  # time budget of the final interleaved timing


@dataclass
class Candidate:
    recipe: str
    metric: float | None = None
    drop: float | None = None
    latency_ms: float | None = None
    ok: bool = False
    error: str | None = None
    seconds: float = 0.0


@dataclass
class Outcome:
    best: str
    results: list[dict[str, Any]]
    front: list[dict[str, Any]]
    summary: str
    computed: int = 0  # candidates evaluated in this run
    cached: int = 0    # candidates served from an earlier run's cache


def join(parts: list[str]) -> str:
    """Steps joined in their canonical order (`Step.order`: structure on float weights, tokens, recovery,
    precision last), one per step name."""
    by_name = {p.split(":")[0]: p for p in parts if p}
    steps = all_steps()
    return "+".join(by_name[n] for n in sorted(by_name, key=lambda n: steps[n].order if n in steps else 99))


# Share of the exploring budget stage 1 may use: the best recipes are usually combinations, so a long
# tail of single settings must not leave stage 2 nothing.
SINGLES_SHARE = 0.5


def knob_of(step: Step, text: bool = False) -> Knob | None:
    """The knob the search sweeps for `step` (the text one for variable-length text, where it has one)."""
    return step.text_knob if text and step.text_knob is not None else step.knob


def setting(step: Step, knob: Knob, value: Any) -> str:
    """The inline recipe step for one knob value: `name:presets,option=value`."""
    return f"{step.name}:{knob.presets + ',' if knob.presets else ''}{knob.option}={value}"


def family_grid(step: Step, tokens: int, text: bool = False, seq2seq: bool = False) -> list[str]:
    """The inline settings of one step, mild to aggressive ([name] for a flag; [] for a step the search
    leaves out). `text`: the model takes variable-length text (the step's text knob applies);
    `seq2seq`: the model has an encoder and a decoder (precision steps may also cover the decoder only)."""
    if step.role == "precision":
        return switch_grid(step, seq2seq)
    if step.role == "flag":
        return [step.name]
    knob = knob_of(step, text)
    return [setting(step, knob, v) for v in knob.grid(tokens)] if knob and step.role in EXPLORED else []


def switch_grid(step: Step, seq2seq: bool = False) -> list[str]:
    """A precision step as is, then compiled where it offers that (fuses the dequantize work), then
    compiled with calibrated activation scales where it offers those (quantizing fuses away too). On an
    encoder-decoder model, a step that can be confined to one side (`scope`) is also tried there alone
    (an integer format on the memory-bound decoding steps, a float one on the encoder's long GEMMs)."""
    fields = {f.name for f in dataclasses.fields(step.options)}
    scoped = [f"{step.name}:scope={v}" for v in scopes(step)] if seq2seq else []
    # one side alone first: milder than the whole model, and the sweep stops at the first setting over budget
    if "compile" not in fields:
        return scoped + [step.name]
    return scoped + [step.name, f"{step.name}:compile=true"] + ([f"{step.name}:activations=static,compile=true"]
                                                                if "activations" in fields else [])


def scopes(step: Step) -> list[str]:
    """The parts of an encoder-decoder a precision step can be confined to (its `scope` option's values
    other than "all"), as the step's options declare them."""
    hint = typing.get_type_hints(step.options).get("scope")
    return [v for v in typing.get_args(hint) if v != "all"]


def midpoint(opt: str, lo: Any, hi: Any) -> Any | None:
    """The setting halfway between a feasible `lo` and an infeasible `hi`, None if there is none."""
    mid = (lo + hi) / 2
    mid = int(mid) if isinstance(hi, int) else round(mid, 4)
    return None if mid in (lo, hi) else mid


class Search:
    def __init__(self, cfg: SearchConfig, console=None) -> None:
        if not 0 <= cfg.max_drop < 1:
            raise SlimformerError(f"--max-drop must be in [0, 1), got {cfg.max_drop}")
        if cfg.task not in TASKS:
            raise SlimformerError(f"unknown task {cfg.task!r}; tasks: {', '.join(TASKS)}")
        self.cfg = cfg
        self.console = console
        self.task = get_task(cfg.task)
        self.metric_name = TASKS[cfg.task].metric
        torch.set_num_threads(cfg.threads)
        self.base = io.load(cfg.model)
        self.applied = recipe_of(cfg.model)
        family = family_of(self.base, "search")
        images = family.dims(self.base).images
        # a task's workload runs its own calls (batch 1 transcription): the example inputs only serve the
        # peak-memory measurement, at batch 1 too
        self.batch = cfg.batch or (1 if hasattr(self.task, "workload") else 64 if images else 32)
        self.text = not images  # variable-length rows (TEXT_KNOBS)
        self.tokens = family.token_count(self.base, cfg.seq_len)
        self.inputs = example_inputs(self.base, batch=self.batch, seq_len=cfg.seq_len)
        registered = all_steps()
        unknown = sorted(set(cfg.steps or []) - set(registered))
        if unknown:
            raise SlimformerError(f"--steps: unknown {', '.join(unknown)}; steps: {', '.join(sorted(registered))}")
        self.seq2seq = {"encoder", "decoder"} <= set(family.stacks(self.base))
        self.steps = {n: s for n, s in registered.items() if (cfg.steps is None or n in cfg.steps)
                      and s.role in EXPLORED and (s.applies is None or s.applies(self.base))}
        # a task whose model is used through more than one forward call (Whisper: an encoder pass, then
        # one decoder call per token) says what one use is; otherwise a forward on example inputs is timed
        self.workload = getattr(self.task, "workload", None)
        self.screen = getattr(self.task, "screen", self.task.evaluate)
        # the step that trains a structural setting back toward fp32 when it misses the budget
        self.recovery = next((n for n, s in registered.items() if s.role == "recovery"), None)
        self.evaluated = 0  # candidates computed in this process (not served from the cache)
        self.loaded: set[str] = set()   # recipes in the cache an earlier run left
        self.resumed: set[str] = set()  # of those, the ones this run asked for
        self.cache_path = Path(cfg.out) / "cache.json"
        self.cache: dict[str, dict] = {}
        self.started = time.perf_counter()
        self.base_ms: float | None = None
        self.base_metric = 0.0
        self.base_scores: dict[str, float] = {}  # every metric of fp32's screen (the guarded ones among them)

    # ---- cache ----------------------------------------------------------------------------------
    def key(self) -> dict[str, Any]:
        path = Path(self.cfg.model)
        if (path / io.META).exists():
            model_id = io.read_meta(path)["sha256"]
        elif self.cfg.model == "minilm" or (path / "config.json").exists():
            from .models.hf import minilm_dir

            hf = minilm_dir() if self.cfg.model == "minilm" else path
            model_id = io.sha256(hf / "model.safetensors")
        else:
            model_id = self.cfg.model
        return {"model": model_id, "task": self.cfg.task, "batch": self.batch, "seq_len": self.cfg.seq_len,
                "threads": self.cfg.threads, "torch": torch.__version__}

    def load_cache(self) -> None:
        if self.cache_path.exists():
            try:
                data = json.loads(self.cache_path.read_text())
            except json.JSONDecodeError:
                data = {}
            if data.get("key") == self.key():
                self.cache = data.get("candidates", {})
                self.loaded = set(self.cache)
                log.info("resuming: %d cached candidates", len(self.cache))

    def save_cache(self) -> None:
        atomic.write_text(self.cache_path, json.dumps({"key": self.key(), "candidates": self.cache}, indent=1))

    # ---- one candidate --------------------------------------------------------------------------
    def call(self, model: nn.Module) -> Callable[[], object]:
        """What one timed call of `model` is: the task's workload, or a forward on the example inputs."""
        if self.workload is not None:
            return self.workload(model)
        args, kwargs = self.inputs
        return lambda: model(*args, **kwargs)

    def quick_latency(self, model: nn.Module) -> float:
        # about quick_seconds of timing per candidate, between 4 and 15 calls
        q = self.cfg.quick_seconds
        if self.base_ms is None:
            return measure(self.call(model), self.batch, repeats=10, warmup_seconds=q).p50_ms
        # Paired with fp32, interleaved: the load on a shared machine drifts during a search, so a
        # candidate's latency is its ratio to fp32 *now*, scaled to the fp32 latency measured at the start.
        rounds = int(min(15, max(4, q / max(self.base_ms / 1000, 1e-3))))
        t = interleaved({"fp32": self.call(self.base), "cand": self.call(model)},
                        self.batch, rounds=rounds, calls_per_round=1, warmup_seconds=q / 2)
        return self.base_ms * t["cand"].p50_ms / t["fp32"].p50_ms

    def build(self, recipe: str) -> nn.Module:
        model, _ = compress_model(copy.deepcopy(self.base), recipe, self.cfg.task, self.applied)
        return model

    def evaluate(self, recipe: str) -> Candidate:
        if recipe in self.loaded:
            self.resumed.add(recipe)
        if recipe in self.cache:
            return Candidate(**self.cache[recipe])
        t0 = time.perf_counter()
        self.evaluated += 1
        cand = Candidate(recipe)
        try:
            model = self.build(recipe)
            scores = self.screen(model)
            cand.metric = float(scores[self.metric_name])
            cand.drop = self.worst_drop(scores)
            cand.ok = cand.drop <= self.cfg.max_drop + 1e-9
            if cand.ok:  # cheap first: latency only for candidates inside the budget
                cand.latency_ms = self.quick_latency(model)
        except (SlimformerError, RuntimeError, ValueError, TypeError, NotImplementedError) as e:
            cand.error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            log.warning("%s: %s", recipe, cand.error)
        cand.seconds = time.perf_counter() - t0
        self.cache[recipe] = dataclasses.asdict(cand)
        self.save_cache()
        self.report(cand)
        return cand

    def worst_drop(self, scores: dict[str, float]) -> float:
        """The drop the budget bounds: of the task's metric, and of each metric the task guards
        (`GUARDED`: speech's clean and noisy word accuracy, each on its own), whichever is largest."""
        guarded = [float(self.base_scores[n]) - float(scores[n]) for n in getattr(self.task, "GUARDED", ())]
        return max([self.base_metric - float(scores[self.metric_name]), *guarded])

    def report(self, c: Candidate) -> None:
        if self.console is None:
            return
        if c.error:
            self.console.log(f"[red]x[/] {c.recipe}: {c.error}")
        elif not c.ok:
            self.console.log(f"[yellow]-[/] {c.recipe}: {self.metric_name} {c.metric:.4f} (drop {c.drop:.4f})")
        else:
            self.console.log(f"[green]+[/] {c.recipe}: {self.metric_name} {c.metric:.4f}, "
                             f"{c.latency_ms:.1f} ms ({self.base_ms / c.latency_ms:.2f}x)  [{c.seconds:.0f} s]")

    def over_budget(self, share: float | None = None) -> bool:
        """Past `share` of the exploring budget (stage 1 stops at SINGLES_SHARE to leave stage 2 time).
        Without a share: too close to the whole budget to fit another candidate as long as the longest
        one so far, since a compiled candidate can take minutes and the budget is what bounds a search."""
        if self.cfg.budget_s is None:
            return False
        elapsed = time.perf_counter() - self.started
        if share is not None:
            return elapsed > share * self.cfg.budget_s
        longest = max((c["seconds"] for c in self.cache.values() if c["recipe"] not in self.loaded), default=0.0)
        return elapsed + longest > self.cfg.budget_s

    # ---- the search -----------------------------------------------------------------------------
    def can_distill(self) -> bool:
        """The recovery step needs data: the task's training set, or at least its calibration inputs."""
        has_data = hasattr(self.task, "training_data") or hasattr(self.task, "calibration")
        return self.cfg.distill and self.recovery is not None and has_data

    def role(self, name: str) -> str | None:
        """The role of a step (or of the precision group) in this search."""
        return "precision" if name == PRECISION else self.steps[name].role

    def singles(self, tick) -> dict[str, list[Candidate]]:
        """Stage 1: each family alone, mild to aggressive, stopping dominated branches. The first
        setting over budget gets one rescue: distillation (structural steps) or else the halfway
        setting, so a coarse grid does not miss a mild setting that fits."""
        feasible: dict[str, list[Candidate]] = {}
        for name, step in sorted(self.steps.items(), key=lambda kv: kv[1].priority):
            knob = knob_of(step, self.text) if step.role in ("structural", "tokens") else None
            values = knob.grid(self.tokens) if knob else family_grid(step, self.tokens, self.text, self.seq2seq)
            kept: list[Candidate] = []
            distilled = False

            def recipe_for(value: Any, distilled: bool, step: Step = step, knob=knob) -> str:
                part = value if knob is None else setting(step, knob, value)
                return join([part, self.recovery] if distilled else [part])

            last_ok = knob.identity if knob else None
            for value in values:
                if self.over_budget(SINGLES_SHARE):
                    break
                c = self.evaluate(recipe_for(value, distilled))
                tick(c)
                if not c.ok and not c.error and step.role == "structural" and self.can_distill() and not distilled:
                    distilled = True  # rescue this setting (and go on from it) with distillation
                    c = self.evaluate(recipe_for(value, distilled))
                    tick(c)
                if not c.ok and not c.error and knob and last_ok is not None:
                    mid = midpoint(knob.option, last_ok, value)
                    if mid is not None:
                        c2 = self.evaluate(recipe_for(mid, distilled))
                        tick(c2)
                        if c2.ok and c2.latency_ms < min([self.base_ms * 0.98] + [k.latency_ms for k in kept]):
                            kept.append(c2)
                if not c.ok:
                    break
                last_ok = value
                if step.role in ("tokens", "precision", "flag"):
                    # every setting inside the budget goes on to stage 2: a token step's cost and a
                    # compiled switch's gain depend on what the other steps leave (compiling pays most
                    # on a model that pruning has made small and overhead-bound)
                    kept.append(c)
                    continue
                if kept and c.latency_ms >= kept[-1].latency_ms * 0.98:
                    break  # more aggressive but no faster: the rest of the branch is dominated
                if c.latency_ms < self.base_ms * 0.98:
                    kept.append(c)
            if kept:
                feasible[name] = kept
        self.confined_pairs(feasible, tick)
        return feasible

    def confined_pairs(self, feasible: dict[str, list[Candidate]], tick) -> None:
        """Precision settings confined to different parts of an encoder-decoder, composed: a recipe holds
        one precision switch in stage 2, and one step on the decoder with another on the encoder is one
        switch made of two. Kept (under the first step's name) where the pair stays inside the budget."""
        confined = []
        for name, cands in feasible.items():
            if self.role(name) != "precision":
                continue
            for c in cands:
                scope = getattr(parse_recipe(c.recipe)[0].options, "scope", "all")
                if scope != "all":
                    confined.append((name, scope, c))
        for (n1, s1, c1), (n2, s2, c2) in itertools.combinations(confined, 2):
            if n1 == n2 or s1 == s2 or self.over_budget(SINGLES_SHARE):
                continue
            c = self.evaluate(join([c1.recipe, c2.recipe]))
            tick(c)
            if c.ok:
                feasible[n1].append(c)

    def combine(self, singles: dict[str, list[Candidate]], tick) -> list[Candidate]:
        """Stage 2: grow a beam of recipes on the (latency, drop) front, one family at a time. The
        precision switches (a recipe holds one) join as one group, slowest to fastest, so every beam
        state gets the best of all of them rather than only of the family that happened to come first."""
        singles = dict(singles)
        precision = [c for n in [n for n in singles if self.role(n) == "precision"] for c in singles.pop(n)]
        if precision:
            singles[PRECISION] = sorted(precision, key=lambda c: -c.latency_ms)
        speed = {n: self.base_ms / min(c.latency_ms for c in cs) for n, cs in singles.items()}
        # flags, then token steps, join last: what they save shows once a compiled precision step is there
        order = sorted(singles, key=lambda n: (self.role(n) == "tokens", self.role(n) == "flag", -speed[n]))
        base = Candidate("", self.base_metric, 0.0, self.base_ms, True)
        beam, seen = [base], {}
        for name in order:
            grown = list(beam)
            for state in beam:
                if self.over_budget():
                    break
                found = 0
                for single in reversed(singles[name]):  # most aggressive first
                    if self.over_budget():
                        break
                    parts = [p for p in state.recipe.split("+") if p] + single.recipe.split("+")
                    recipe = join(parts)
                    try:
                        parse_recipe(recipe)
                    except SlimformerError:
                        break  # this family cannot follow the state (order / family rule)
                    estimate = state.latency_ms * single.latency_ms / self.base_ms
                    if self.role(name) not in ("tokens", "flag") and estimate > state.latency_ms * 0.97:
                        continue  # no gain expected: do not build it
                    c = seen.get(recipe) or self.evaluate(recipe)
                    seen[recipe] = c
                    tick(c)
                    if c.ok and c.latency_ms < state.latency_ms:
                        grown.append(c)
                        found += 1
                        if found == 2:
                            break
            beam = beam_front(grown, self.cfg.beam)
        return [c for c in seen.values() if c.ok]

    def run(self) -> Outcome:
        from .tasks.training import progress_bar

        out = Path(self.cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        self.load_cache()
        self.base_scores = self.screen(self.base)
        self.base_metric = float(self.base_scores[self.metric_name])
        self.base_ms = self.quick_latency(self.base)
        if self.console:
            self.console.log(f"fp32: {self.metric_name} {self.base_metric:.4f}, {self.base_ms:.1f} ms/batch "
                             f"(batch {self.batch}, {self.cfg.threads} threads); budget: drop <= {self.cfg.max_drop}")
        total = sum(len(family_grid(s, self.tokens, self.text, self.seq2seq)) for s in self.steps.values())
        with progress_bar() as bar:
            job = bar.add_task("search", total=total * 2, info="")

            def tick(c: Candidate) -> None:
                bar.update(job, advance=1, info=c.recipe[:50])

            singles = self.singles(tick)
            combos = self.combine(singles, tick)
            bar.update(job, completed=total * 2)
        pool = {c.recipe: c for cs in singles.values() for c in cs} | {c.recipe: c for c in combos}
        return self.finish(list(pool.values()))

    def finish(self, pool: list[Candidate]) -> Outcome:
        """Stage 3: measure the front with fp32 and the baselines in one run; write everything."""
        from .api import write_results
        from .bench.runner import baseline_variants, measure_variants, torch_variant
        from .report import write_report
        from .report.tables import pareto_front

        out = Path(self.cfg.out)
        front_idx = pareto_front([(c.latency_ms, c.metric) for c in pool])
        front = [pool[i] for i in front_idx][:self.cfg.final_front]
        # Exploring timed each candidate for ~2 s, so candidates within ~15 % of each other are not yet
        # ordered: the fastest few inside the budget join the long final run, which picks the best.
        fastest = sorted(pool, key=lambda c: c.latency_ms)[:self.cfg.final_front]
        front += [c for c in fastest if c not in front]
        if self.console:
            self.console.log(f"final measurement: fp32, {len(front)} front recipe(s), baselines "
                             f"{','.join(self.cfg.baselines) or 'none'}")
        import tempfile

        with tempfile.TemporaryDirectory(prefix="slimformer-search-") as tmp:
            variants = [torch_variant("fp32", self.base, "", self.applied, self.inputs, Path(tmp), self.batch,
                                      self.cfg.seq_len, {self.metric_name: self.base_metric})]
            built = []
            for c in front:
                model, record = compress_model(copy.deepcopy(self.base), c.recipe, self.cfg.task, self.applied)
                built.append(model)
                variants.append(torch_variant(c.recipe, model, c.recipe, record, self.inputs, Path(tmp), self.batch,
                                              self.cfg.seq_len, {self.metric_name: c.metric}))
            if self.workload is not None:
                for v, model in zip(variants, [self.base, *built], strict=True):
                    v.fn = self.call(model)
                if self.cfg.baselines:
                    log.warning("baselines %s skipped: they time one forward call, task %s times its own "
                                "workload (its peers: benchmarks/%s.py)", ",".join(self.cfg.baselines),
                                self.cfg.task, self.cfg.task)
            else:
                variants += baseline_variants(self.base, self.cfg.baselines, self.inputs, Path(tmp),
                                              self.cfg.threads, self.cfg.task)
            say = (lambda m: self.console.log(m)) if self.console else None
            results = measure_variants(variants, self.batch, self.tokens, self.cfg.threads, self.cfg.task,
                                       rounds=self.cfg.final_rounds, max_seconds=self.cfg.final_seconds,
                                       progress=say)
        base_p50 = results[0]["latency_ms"]["p50"]
        for r in results:
            r["speedup"] = round(base_p50 / r["latency_ms"]["p50"], 4)
        ours = [r for r in results if r["kind"] == "slimformer"]
        best = min(ours, key=lambda r: r["latency_ms"]["p50"])
        write_results(out / "results.json", results)
        atomic.write_text(out / "front.json", json.dumps([r for r in ours if r["recipe"]], indent=2))
        steps = [{s.step.name: dataclasses.asdict(s.options)} for s in parse_recipe(best["recipe"] or None)]
        doc = {"name": f"search-{self.cfg.task}",
               "description": (f"fastest recipe within {self.metric_name} drop <= {self.cfg.max_drop}: "
                               f"{best['speedup']:.2f}x fp32 p50 at batch {self.batch}, {self.cfg.threads} threads"),
               "steps": steps}
        atomic.write_text(out / "best_recipe.yaml", yaml.safe_dump(doc, sort_keys=False))
        write_report([out / "results.json"], out, best=best["recipe"], title=f"slimformer search: {self.cfg.model}",
                     floor=self.base_metric - self.cfg.max_drop)
        summary = (f"{self.metric_name} {best['metrics'].get(self.metric_name, float('nan')):.4f} vs "
                   f"{self.base_metric:.4f}, {best['speedup']:.2f}x fp32, "
                   f"{time.perf_counter() - self.started:.0f} s")
        return Outcome(best["recipe"], results, [r for r in ours if r["recipe"]], summary, self.evaluated,
                       len(self.resumed))


def beam_front(cands: list[Candidate], k: int) -> list[Candidate]:
    """Candidates on the (latency, drop) Pareto front, at most k, spread from fastest to most accurate.
    Slower but more accurate states stay: they leave budget for the families still to come."""
    from .report.tables import pareto_front

    idx = pareto_front([(c.latency_ms, -c.drop) for c in cands])
    front = [cands[i] for i in idx]
    if len(front) <= k:
        return front
    picks = sorted({round(i * (len(front) - 1) / (k - 1)) for i in range(k)})
    return [front[i] for i in picks]


def run_search(cfg: SearchConfig, console=None) -> Outcome:
    return Search(cfg, console).run()
