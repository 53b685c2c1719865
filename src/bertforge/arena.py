"""The recipe arena: which member of the family should I pick for my CPU-time budget?

Every variant (a recipe, or a recipe with one thing changed) is pretrained at the same size on the same
corpus store for the same CPU time, then fine-tuned on the same tasks with the same settings, and the
report puts parameters, tokens seen, held-out MLM loss, each task's score and inference latency side by
side, checks the direction of each paper's claim (CLAIMS) and plots score against pretraining time.

Equal compute, deterministically: ``budget_minutes`` is turned into a step count per variant by timing a
few calibration steps of that very variant on this machine (ELECTRA's steps cost more than BERT's, so it
gets fewer). The plan is stored in ``OUT/arena.json`` before the long work starts; from then on a run is
a pure function of the seed and the plan, so a killed arena resumes to the same numbers (``--budget-steps``
skips calibration and gives every variant the same step count).

Resumable: OUT/arena.json records each finished stage (pretraining, each task, latency) atomically. A
rerun of the same command skips finished stages, resumes an interrupted pretraining run from its last
checkpoint (the loop's exact resume), and redoes an unfinished fine-tuning run (minutes at most).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import BertforgeError
from .files import atomic_path, write_json, write_text
from .recipes import RECIPES


# ---- what competes -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    recipe: str  # the recipe it starts from (recipes.RECIPES)
    summary: str  # what is changed, in a few words
    recipe_settings: dict = field(default_factory=dict)  # pretrain.RECIPE_KEYS changes (ablations)
    model: dict = field(default_factory=dict)  # ModelConfig changes
    pretrain: bool = True  # False: the recipe's architecture, randomly initialised (the no-pretraining floor)


# Plain recipes (the recipe's own masking, builder and objectives) plus the ablations the claims need.
# distilbert is not here: it needs a teacher, it is not a from-scratch recipe.
VARIANTS: dict[str, Variant] = {
    **{name: Variant(name, "the recipe as defined") for name in RECIPES if name != "distilbert"},
    "random-init": Variant("roberta-wwm-ext", "no pretraining: the same tiny architecture, random weights",
                           pretrain=False),
    "bert-dynamic": Variant("bert", "BERT with fresh masks every epoch (RoBERTa's dynamic masking)",
                            {"dynamic": True}),
    "bert-no-nsp": Variant("bert", "BERT, dynamic masking, without NSP (document sentences, MLM only)",
                           {"dynamic": True, "builder": "doc-sentences", "objectives": ("mlm",)}),
    "roberta-wwm-ext-char": Variant("roberta-wwm-ext", "RoBERTa-wwm-ext masking single tokens (characters) "
                                    "instead of whole words", {"mask_unit": "token"}),
    "macbert-mask": Variant("macbert", "MacBERT with [MASK] instead of similar words (no correction task)",
                            {"corruption": "mask"}),
    "albert-unshared": Variant("albert", "ALBERT without cross-layer sharing", model={"sharing": "none"}),
    # ALBERT's E sweep (64/128/256/768 at H=768) scaled to the arena's size: E = H/8, H/4, H/2 (the
    # recipe's default at small sizes) and H (no factorization). Sizes resolve against the hidden size.
    "albert-e/8": Variant("albert", "ALBERT with embedding size E = H/8", model={"embedding_size": "/8"}),
    "albert-e/4": Variant("albert", "ALBERT with embedding size E = H/4", model={"embedding_size": "/4"}),
    "albert-e/1": Variant("albert", "ALBERT with E = H (no factorization)", model={"embedding_size": "/1"}),
}


@dataclass(frozen=True)
class Claim:
    paper: str
    text: str
    better: str  # the variant the claim favours
    worse: str
    tasks: tuple[str, ...] = ()  # the tasks the claim is about (() = the mean over every task run)
    kind: str = "better"  # "better": better must win; "no-worse": better must not lose beyond noise


CLAIMS: tuple[Claim, ...] = (
    Claim("RoBERTa (Liu et al. 2019, table 1)", "dynamic masking is as good as or better than static masking",
          "bert-dynamic", "bert", kind="no-worse"),
    Claim("RoBERTa (Liu et al. 2019, table 2)", "removing NSP matches or improves downstream scores",
          "bert-no-nsp", "bert-dynamic", kind="no-worse"),
    Claim("ALBERT (Lan et al. 2020, table 3)", "a factorized embedding (E < H) costs little score for far "
          "fewer parameters", "albert", "albert-e/1", kind="no-worse"),
    Claim("ALBERT (Lan et al. 2020, table 4)", "sharing all layers costs some score (for far fewer parameters)",
          "albert-unshared", "albert"),
    Claim("ELECTRA (Clark et al. 2020, fig. 1)", "replaced-token detection beats BERT at equal compute",
          "electra", "bert"),
    Claim("Chinese WWM (Cui et al. 2019)", "whole-word masking beats character masking on Chinese NER",
          "roberta-wwm-ext", "roberta-wwm-ext-char", tasks=("msra-ner",)),
    Claim("SpanBERT (Joshi et al. 2020, table 1)", "span masking + SBO beats token masking on extractive QA",
          "spanbert", "bert-no-nsp", tasks=("cmrc2018",)),
    Claim("MacBERT (Cui et al. 2020, table 7)", "similar-word correction beats [MASK] replacement",
          "macbert", "macbert-mask"),
    Claim("every paper", "pretraining beats no pretraining", "roberta-wwm-ext", "random-init"),
)
CLAIM_VARIANTS = tuple(dict.fromkeys(v for c in CLAIMS for v in (c.better, c.worse)))


@dataclass(frozen=True)
class ArenaTask:
    task: str  # finetune task kind
    train: str  # dataset spec (taskdata.load); "{data}" = the shared data directory
    test: str
    eval: str | None  # model selection split (None: the final model is scored)
    budgets: tuple[int, int, int]  # train, eval, test examples (times --scale)
    metric: str  # the score the report ranks by
    epochs: float = 2.0
    options: dict = field(default_factory=dict)


TASKS: dict[str, ArenaTask] = {
    "chinese-sentiment": ArenaTask("classify", "chinese-sentiment:train", "chinese-sentiment:test",
                                   "chinese-sentiment:validation", (2000, 400, 1000), "accuracy",
                                   options={"max_length": 128}),
    "msra-ner": ArenaTask("ner", "msra-ner:train", "msra-ner:test", "msra-ner:validation", (2000, 400, 1000), "f1",
                          epochs=3.0, options={"max_length": 128}),
    "cmrc2018": ArenaTask("qa", "{data}/cmrc2018/cmrc2018_trial.json", "{data}/cmrc2018/cmrc2018_dev.json", None,
                          (1000, 0, 500), "f1", options={"max_length": 192, "doc_stride": 48}),
    "ocnli": ArenaTask("pair", "{data}/ocnli/train.10k.json", "{data}/ocnli/dev.json", None, (4000, 0, 1000),
                       "accuracy", options={"max_length": 128}),
    "rotten-tomatoes": ArenaTask("classify", "rotten-tomatoes:train", "rotten-tomatoes:test",
                                 "rotten-tomatoes:validation", (2000, 400, 1000), "accuracy",
                                 options={"max_length": 64}),
}


def expand_variants(names: list[str]) -> list[str]:
    """Variant names from the command line; ``claims`` expands to every variant the claims compare."""
    out: list[str] = []
    for name in names:
        items = CLAIM_VARIANTS if name == "claims" else (name,)
        for item in items:
            if item not in VARIANTS:
                raise BertforgeError(f"--recipes: unknown variant {item!r}; valid: claims, {', '.join(VARIANTS)}")
            if item not in out:
                out.append(item)
    if not out:
        raise BertforgeError("--recipes: name at least one recipe or variant")
    return out


def check_tasks(names: list[str], data_dir: str | None) -> None:
    for name in names:
        if name not in TASKS:
            raise BertforgeError(f"--tasks: unknown task {name!r}; valid: {', '.join(TASKS)}")
        if "{data}" in TASKS[name].train:
            if not data_dir:
                raise BertforgeError(f"--tasks {name}: needs --data-dir (the directory holding cmrc2018/ and ocnli/)")
            for spec in (TASKS[name].train, TASKS[name].test):
                path = Path(spec.format(data=data_dir))
                if not path.is_file():
                    raise BertforgeError(f"--tasks {name}: {path} does not exist")


# ---- settings and state --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ArenaSettings:
    corpus: str
    variants: tuple[str, ...]
    tasks: tuple[str, ...]
    budget_minutes: float = 0.0  # equal CPU time per variant (calibrated into steps), or
    budget_steps: int = 0  # equal steps per variant (no calibration)
    size: str = "tiny"
    seed: int = 0
    # --set assignments applied to every pretraining run (after the arena's defaults below)
    pretrain_settings: tuple[str, ...] = ()
    lr: float = 5e-4  # pretraining lr for AdamW recipes
    lamb_lr: float = 2e-3  # ... and for LAMB recipes (ALBERT's 1.76e-3; LAMB scales steps by ||w||)
    finetune_lr: float = 5e-4
    scale: float = 1.0  # multiplies every task's example budgets
    data_dir: str = ""
    calibration_steps: int = 8

    def comparable(self) -> dict:
        """What must not change between a run and its resumption (variants and tasks may be added)."""
        d = dataclasses.asdict(self)
        for key in ("variants", "tasks"):
            d.pop(key)
        return d


ARENA_DEFAULTS = ("batch_size=32", "max_len=128", "warmup_ratio=0.05", "grad_accum=1", "eval_every=0",
                  "eval_batches=20", "save_every_steps=100", "keep_last=1", "log_every=10", "max_minutes=0",
                  "max_tokens=0")


class ArenaState:
    """OUT/arena.json: settings, the step plan and every finished stage; each change written atomically."""

    def __init__(self, out: Path, settings: ArenaSettings):
        self.path = out / "arena.json"
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
            except json.JSONDecodeError as exc:
                raise BertforgeError(f"{self.path}: not valid JSON ({exc}); remove it to start over") from None
            old = data.get("settings", {})
            mine = settings.comparable()
            for key, value in mine.items():
                if json.loads(json.dumps(old.get(key))) != json.loads(json.dumps(value)):
                    raise BertforgeError(f"{out} is an arena run with {key}={old.get(key)!r}, not {value!r}; use "
                                         "another --out or the same settings to resume it")
            self.data = data
            self.data["settings"] = dataclasses.asdict(settings) | {
                "variants": list(dict.fromkeys([*old.get("variants", []), *settings.variants])),
                "tasks": list(dict.fromkeys([*old.get("tasks", []), *settings.tasks]))}
        else:
            self.data = {"settings": dataclasses.asdict(settings), "plan": {}, "results": {}}
        self.save()

    @property
    def plan(self) -> dict:
        return self.data["plan"]

    def result(self, variant: str) -> dict:
        return self.data["results"].setdefault(variant, {"tasks": {}})

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json(self.path, self.data)


class ArenaInterrupted(BertforgeError):
    """A pretraining run was interrupted (Ctrl-C, SIGTERM); the arena resumes with the same command."""


# ---- the stages ----------------------------------------------------------------------------------------
def variant_spec(name: str, settings: ArenaSettings, max_steps: int, extra: tuple[str, ...] = ()):
    from .pretrain import make_spec

    v = VARIANTS[name]
    lamb = RECIPES[v.recipe].optim.get("optimizer") == "lamb"
    assignments = [*ARENA_DEFAULTS, f"lr={settings.lamb_lr if lamb else settings.lr}", f"seed={settings.seed}",
                   *settings.pretrain_settings, f"max_steps={max_steps}", *extra]
    for key, value in v.recipe_settings.items():
        assignments.append(f"recipe.{key}={','.join(value) if isinstance(value, tuple) else value}")
    spec = make_spec(v.recipe, settings.corpus, settings.size, assignments=assignments)
    model = {**spec.model}
    for key, value in v.model.items():
        if isinstance(value, str) and value.startswith("/"):  # a fraction of the hidden size
            hidden = model.get("hidden_size") or _size_hidden(settings.size)
            value = max(1, int(hidden) // int(value[1:]))
        model[key] = value
    return dataclasses.replace(spec, model=model)


def _size_hidden(size: str) -> int:
    from .recipes import SIZES

    return SIZES[size][0]


def calibrate(name: str, settings: ArenaSettings, work: Path) -> float:
    """Seconds per optimizer step of variant ``name`` here: a short run, the first steps (warm-up) dropped."""
    from .pretrain import pretrain

    n = max(4, settings.calibration_steps)
    spec = variant_spec(name, settings, n, ("log_every=1", "eval_batches=1", "save_every_steps=0"))
    if work.exists():
        shutil.rmtree(work)
    pretrain(spec, work, progress_bar=False)
    times = [json.loads(line)["elapsed"] for line in (work / "metrics.jsonl").read_text().splitlines()
             if json.loads(line).get("kind") == "train"]
    shutil.rmtree(work, ignore_errors=True)
    steps = [b - a for a, b in zip(times[2:], times[3:])]
    return statistics.median(steps) if steps else times[-1] / n


def pretrain_variant(name: str, settings: ArenaSettings, steps: int, run_dir: Path, progress: bool) -> dict:
    """Pretrain (or resume), or save the random initialisation; returns the record for arena.json."""
    from .pretrain import build_model_config, load_tokenizer, open_corpus, pretrain

    v = VARIANTS[name]
    spec = variant_spec(name, settings, max(1, steps))
    started = time.monotonic()
    if not v.pretrain:
        from .modeling import Encoder
        from .train.checkpoint import seed_everything

        store = open_corpus(spec)
        tok = load_tokenizer(spec, store)
        seed_everything(settings.seed)
        final = run_dir / "final"
        tmp = run_dir / ".final.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        Encoder(build_model_config(spec, store)).save_pretrained(tmp)
        tok.save_pretrained(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        return {"steps": 0, "tokens": 0, "train_seconds": 0.0, "wall_seconds": 0.0, "eval": {}}
    resume = (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir())
    if run_dir.exists() and not resume:
        shutil.rmtree(run_dir)
    result = pretrain(spec, run_dir, resume=resume, progress_bar=progress)
    if result.stopped_by == "interrupted":
        raise ArenaInterrupted(f"arena interrupted while pretraining {name}; rerun the same command to resume")
    return {"steps": result.step, "tokens": result.tokens, "train_seconds": round(result.elapsed, 2),
            "wall_seconds": round(time.monotonic() - started, 2), "stopped_by": result.stopped_by,
            "eval": {k: float(v) for k, v in result.eval_metrics.items()}}


def task_paths(task: ArenaTask, data_dir: str) -> tuple[str, str, str | None]:
    fill = (lambda s: s.format(data=data_dir) if s else s)
    return fill(task.train), fill(task.test), fill(task.eval)


def finetune_variant(model_dir: Path, task_name: str, settings: ArenaSettings, out: Path, progress: bool) -> dict:
    from .finetune.run import finetune_and_test
    from .train.checkpoint import seed_everything

    task = TASKS[task_name]
    train, test, dev = task_paths(task, settings.data_dir)
    n_train, n_eval, n_test = (max(8, int(b * settings.scale)) for b in task.budgets)
    if out.exists():  # an unfinished fine-tuning run is redone from the start (it is short)
        shutil.rmtree(out)
    seed_everything(settings.seed)  # the task head's initial weights
    row = finetune_and_test(task.task, model_dir, train, test, out, eval_spec=dev, n_train=n_train, n_eval=n_eval,
                            n_test=n_test, epochs=task.epochs, lr=settings.finetune_lr, options=task.options,
                            seed=settings.seed, progress=progress)
    row["score"] = row["metrics"][task.metric]
    # keep the arena directory small: the scores are recorded, the fine-tuned weights are not needed
    for sub in ("checkpoints", "best", "final"):
        shutil.rmtree(out / sub, ignore_errors=True)
    return row


def latency_ms(model_dir: Path, length: int = 128, runs: int = 20) -> float:
    """Median batch-1 forward time of the encoder at ``length`` tokens."""
    import torch

    from .convert.checkpoint import load_pretrained

    model = load_pretrained(model_dir, "model").eval()
    ids = torch.randint(5, model.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    times = []
    with torch.inference_mode():
        for i in range(runs + 3):
            t0 = time.perf_counter()
            model(ids, mask)
            if i >= 3:
                times.append(time.perf_counter() - t0)
    return round(1000 * statistics.median(times), 3)


def parameters(model_dir: Path) -> int:
    from .convert.checkpoint import read_config
    from .modeling import count_parameters

    return count_parameters(read_config(model_dir).config)


# ---- the arena -----------------------------------------------------------------------------------------
def run_arena(out: str | Path, settings: ArenaSettings, progress: bool = True,
              say: Callable[[str], None] = print) -> dict:
    """Run (or resume) the arena in ``out``; returns arena.json's content. Writes OUT/report.md + plots."""
    if bool(settings.budget_minutes) == bool(settings.budget_steps):
        raise BertforgeError("give exactly one of --budget-minutes and --budget-steps")
    if settings.budget_minutes < 0 or settings.budget_steps < 0:
        raise BertforgeError("the budget must be positive")
    check_tasks(list(settings.tasks), settings.data_dir)
    for name in settings.variants:  # every spec checked before any long work
        variant_spec(name, settings, 1)
    out = Path(out)
    state = ArenaState(out, settings)
    total = len(settings.variants)
    worked = False  # a rerun of a finished arena keeps its finishing time
    for i, name in enumerate(settings.variants, 1):
        v = VARIANTS[name]
        record = state.result(name)
        head = f"[arena {i}/{total}] {name}"
        run_dir = out / "runs" / name
        if "pretrain" not in record:
            if name not in state.plan:
                if not v.pretrain:
                    state.plan[name] = {"steps": 0, "seconds_per_step": 0.0}
                elif settings.budget_steps:
                    state.plan[name] = {"steps": settings.budget_steps, "seconds_per_step": None}
                else:
                    say(f"{head}: timing {settings.calibration_steps} calibration steps")
                    sps = max(round(calibrate(name, settings, out / "calibration" / name), 5), 1e-5)  # as stored:
                    steps = max(1, int(settings.budget_minutes * 60 / sps))  # the plan follows from its numbers
                    state.plan[name] = {"steps": steps, "seconds_per_step": sps}
                state.save()
            steps = state.plan[name]["steps"]
            say(f"{head}: pretraining {steps} steps ({v.summary})" if v.pretrain else f"{head}: random initialisation")
            worked = True
            record["pretrain"] = pretrain_variant(name, settings, steps, run_dir, progress)
            record["parameters"] = parameters(run_dir / "final")
            state.save()
        else:
            say(f"{head}: pretraining already done ({record['pretrain']['steps']} steps)")
        for task in settings.tasks:
            if task in record["tasks"]:
                continue
            worked = True
            say(f"{head}: fine-tuning on {task}")
            record["tasks"][task] = finetune_variant(run_dir / "final", task, settings, out / "finetune" / name / task,
                                                     progress)
            say(f"{head}: {task} {TASKS[task].metric} = {record['tasks'][task]['score']:.4f}")
            state.save()
        if "latency_ms" not in record:
            record["latency_ms"] = latency_ms(run_dir / "final")
            state.save()
    if worked or "finished" not in state.data:
        state.data["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    state.save()
    write_report(out, state.data)
    return state.data


# ---- the report ----------------------------------------------------------------------------------------
def standard_error(row: dict) -> float:
    """A rough standard error of a task score: binomial, sqrt(p (1 - p) / n) over the test examples. Exact
    for accuracy; for F1 an approximation that is good enough to say when a difference is noise."""
    p, n = row["score"], max(1, row["test_examples"])
    return math.sqrt(max(p * (1 - p), 1e-4) / n)


def mean_score(record: dict, tasks: tuple[str, ...]) -> tuple[float, float] | None:
    rows = [record["tasks"].get(t) for t in tasks]
    if not rows or any(r is None for r in rows):
        return None
    mean = sum(r["score"] for r in rows) / len(rows)
    se = math.sqrt(sum(standard_error(r) ** 2 for r in rows)) / len(rows)
    return mean, se


def judge(claim: Claim, results: dict, tasks: tuple[str, ...]) -> dict | None:
    use = claim.tasks or tasks
    if claim.better not in results or claim.worse not in results or not all(t in tasks for t in use):
        return None
    a, b = mean_score(results[claim.better], use), mean_score(results[claim.worse], use)
    if a is None or b is None:
        return None
    diff, se = a[0] - b[0], math.sqrt(a[1] ** 2 + b[1] ** 2)
    if claim.kind == "no-worse":
        verdict = ("reproduced (better)" if diff > 2 * se else "consistent (no difference beyond noise)"
                   if diff >= -2 * se else "not reproduced")
    elif diff > 2 * se:
        verdict = "reproduced"
    elif diff > 0:
        verdict = "same direction, within noise"
    elif diff == 0:
        verdict = "no difference"
    elif diff >= -2 * se:
        verdict = "not reproduced (opposite direction, within noise)"
    else:
        verdict = "not reproduced (reversed)"
    return {"claim": claim, "tasks": use, "a": a[0], "b": b[0], "diff": diff, "se": se, "verdict": verdict}


def write_report(out: Path, data: dict) -> Path:
    settings = data["settings"]
    tasks = tuple(t for t in settings["tasks"])
    results = {v: data["results"][v] for v in settings["variants"] if v in data["results"]}
    done = {v: r for v, r in results.items() if "pretrain" in r}
    budget = (f"{settings['budget_minutes']:g} CPU-minutes of pretraining per variant (calibrated into steps)"
              if settings["budget_minutes"] else f"{settings['budget_steps']} pretraining steps per variant")
    lines = [
        "# Recipe arena",
        "",
        f"Corpus store `{settings['corpus']}`, size {settings['size']}, {budget}, seed {settings['seed']}; "
        f"tasks: {', '.join(tasks)} (example budgets x {settings['scale']:g}). Finished {data.get('finished', '-')}.",
        "",
        "| variant | recipe | parameters | steps | tokens seen | pretrain min | held-out MLM loss | "
        + " | ".join(f"{t} ({TASKS[t].metric})" for t in tasks) + " | mean | latency ms (1x128) |",
        "|---|---|---|---|---|---|---|" + "---|" * len(tasks) + "---|---|",
    ]
    for name, r in done.items():
        p = r["pretrain"]
        mlm, gen = p["eval"].get("mlm_loss"), ""
        if mlm is None and "gen_mlm_loss" in p["eval"]:  # ELECTRA: its generator's MLM loss
            mlm, gen = p["eval"]["gen_mlm_loss"], " (generator)"
        scores = [f"{r['tasks'][t]['score']:.4f}" if t in r["tasks"] else "-" for t in tasks]
        mean = mean_score(r, tasks)
        lines.append(
            f"| {name} | {VARIANTS[name].recipe} | {r.get('parameters', 0) / 1e6:.2f}M | {p['steps']:,} | "
            f"{p['tokens']:,} | {p['train_seconds'] / 60:.1f} | {f'{mlm:.3f}{gen}' if mlm is not None else '-'} | "
            + " | ".join(scores) + f" | {f'{mean[0]:.4f}' if mean else '-'} | "
            f"{r.get('latency_ms', float('nan')):.1f} |")
    lines += ["", "Parameters: the encoder that is fine-tuned and deployed (ELECTRA: the discriminator). Held-out "
              "MLM loss is each recipe's own masking on the store's validation documents, so it compares recipes "
              "with the same masking only (whole-word, span and similar-word masks are harder to fill). Scores: "
              "test split after model selection on validation where the task has one.", ""]
    judged = [j for j in (judge(c, done, tasks) for c in CLAIMS) if j]
    if judged:
        lines += ["## The papers' claims, in miniature", "",
                  "| claim | comparison | tasks | favoured | other | difference (2 SE) | verdict |",
                  "|---|---|---|---|---|---|---|"]
        for j in judged:
            c = j["claim"]
            lines.append(f"| {c.paper}: {c.text} | {c.better} vs {c.worse} | {', '.join(j['tasks'])} | "
                         f"{j['a']:.4f} | {j['b']:.4f} | {j['diff']:+.4f} (±{2 * j['se']:.4f}) | {j['verdict']} |")
        lines += ["", "Verdicts: a difference beyond two standard errors (binomial, over the test examples; for "
                  "F1 an approximation) counts. A 'no-worse' claim (the change costs nothing) is consistent with "
                  "the data unless the favoured variant loses by more than that, and reproduced outright only if it "
                  "wins by more; consistent at this noise level is weak evidence.", ""]
    albert = {n: r for n, r in done.items() if VARIANTS[n].recipe == "albert"}
    if len(albert) > 1:
        lines += ["## ALBERT: parameters against score", "", "| variant | embedding size | sharing | parameters | mean score |",
                  "|---|---|---|---|---|"]
        from .convert.checkpoint import read_config

        for n, r in sorted(albert.items(), key=lambda kv: kv[1].get("parameters", 0)):
            cfg = read_config(out / "runs" / n / "final").config
            mean = mean_score(r, tasks)
            lines.append(f"| {n} | {cfg.embedding_size or cfg.hidden_size} (H={cfg.hidden_size}) | {cfg.sharing} | "
                         f"{r.get('parameters', 0) / 1e6:.3f}M | {f'{mean[0]:.4f}' if mean else '-'} |")
        lines.append("")
    plots = _plots(out, done, tasks)
    if plots:
        lines += ["## Plots", ""] + [f"![{title}]({name})" for name, title in plots] + [""]
    report = out / "report.md"
    write_text(report, "\n".join(lines))
    return report


def _plots(out: Path, done: dict, tasks: tuple[str, ...]) -> list[tuple[str, str]]:
    """score_vs_time.png (mean downstream score against pretraining minutes) and loss_curves.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    points = [(r["pretrain"]["train_seconds"] / 60, mean_score(r, tasks), n) for n, r in done.items()]
    points = [(x, m[0], n) for x, m, n in points if m]
    if points:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for x, y, n in points:
            ax.scatter(x, y)
            ax.annotate(n, (x, y), fontsize=8, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("pretraining time (CPU minutes, this machine)")
        ax.set_ylabel("mean downstream score")
        ax.set_title(f"mean of {', '.join(tasks)}", fontsize=9)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        _save_fig(fig, out / "score_vs_time.png")
        plt.close(fig)
        made.append(("score_vs_time.png", "mean downstream score against pretraining time"))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = False
    for n in done:
        log = out / "runs" / n / "metrics.jsonl"
        if not log.is_file():
            continue
        rows = [json.loads(line) for line in log.read_text().splitlines()]
        key = "mlm_loss" if any("mlm_loss" in r for r in rows) else "gen_mlm_loss"  # ELECTRA: the generator's
        xs = [r["elapsed"] / 60 for r in rows if r.get("kind") == "train" and key in r]
        ys = [r[key] for r in rows if r.get("kind") == "train" and key in r]
        if xs:
            ax.plot(xs, ys, label=n if key == "mlm_loss" else f"{n} (generator)", lw=1)
            drawn = True
    if drawn:
        ax.set_xlabel("pretraining time (minutes)")
        ax.set_ylabel("training MLM loss (own masking)")
        ax.legend(fontsize=7, ncol=2)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        _save_fig(fig, out / "loss_curves.png")
        made.append(("loss_curves.png", "MLM loss against pretraining time"))
    plt.close(fig)
    return made


def _save_fig(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
