"""Pretraining, wired: a recipe + a corpus store -> model, masking, sequences, objective -> the one loop.

Everything here is assembly. The parts live where they belong: architecture in config/modeling, masking
and sequence builders in data/, losses in objectives/, the loop in train/. ``PretrainSpec`` is what a run
is made from; it is written into the run directory so that ``--resume RUN_DIR`` rebuilds the same run.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import ModelConfig, require
from .errors import BertforgeError
from .files import write_json
from .recipes import SIZES, Recipe, model_config, recipe as get_recipe
from .train.config import TrainConfig, from_mapping, parse_assignments, read_yaml_mapping


@dataclass(frozen=True)
class DataConfig:
    # Sequence length in tokens, special tokens included.
    max_len: int = 128
    # Sequences per micro-batch; the global batch is batch_size x grad_accum.
    batch_size: int = 32
    # Share of tokens chosen for prediction (15% in BERT and its descendants).
    mask_budget: float = 0.15
    # Static masking: differently masked copies of each sequence (0 = the recipe's default).
    dupe_factor: int = 0
    # MacBERT similar words: a synonyms file (`word sim1 sim2 ...` a line); "" = word2vec on the corpus.
    synonyms: str = ""
    # ELECTRA: generator width as a fraction of the discriminator's (the paper's 1/4 for small models).
    generator_fraction: float = 0.25
    # ELECTRA: weight lambda of the replaced-token-detection loss.
    rtd_weight: float = 50.0
    # Pad each batch to a multiple of this many tokens (8 suits tensor cores and vector units).
    pad_to_multiple_of: int = 8
    # Pack several sequences into each max_len row (data/packing.py): no compute on padding. MLM-style
    # recipes only (NSP/SOP classify each row's [CLS]).
    pack: bool = False
    # Unpacked training streams: batches of sequences of similar length (data/collate.py group_by_length), so
    # a batch pads little: random batches of the builders on the named corpora carry 19-52% padding, grouped
    # 3-11%. (Held-out batches stay random: the loop averages their metrics per batch.)
    group_by_length: bool = True

    def __post_init__(self) -> None:
        require(self, ("max_len", "batch_size"), lambda v: v > 0, "a whole number > 0")
        require(self, ("dupe_factor", "pad_to_multiple_of"), lambda v: v >= 0, "a whole number >= 0")
        require(self, ("mask_budget", "generator_fraction"), lambda v: 0 < v <= 1, "a fraction in (0, 1]")
        require(self, ("rtd_weight",), lambda v: v >= 0, "a number >= 0")


@dataclass(frozen=True)
class PretrainSpec:
    """Everything a pretraining run is built from (JSON-serialisable, stored in RUN_DIR/config.json)."""

    recipe: str
    corpus: str
    size: str = "tiny"
    tokenizer: str = ""  # tokenizer directory; "" = the store's copy, or --init's
    init: str = ""  # continue pretraining this checkpoint directory
    teacher: str = ""  # distilbert: the teacher checkpoint directory
    # corpus, tokenizer, init and teacher are absolute paths, so --resume works from any directory (runs of
    # older versions may hold paths relative to the directory they were started in)
    model: dict = field(default_factory=dict)  # ModelConfig overrides
    train: dict = field(default_factory=dict)  # TrainConfig overrides (on top of the recipe's optim)
    data: dict = field(default_factory=dict)  # DataConfig overrides
    recipe_settings: dict = field(default_factory=dict)  # Recipe field changes (RECIPE_KEYS), e.g. ablations

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---- settings: recipe defaults < YAML file < --set ----------------------------------------------------
_SECTIONS = {"model": ModelConfig, "train": TrainConfig, "data": DataConfig}
# Recipe fields a run may change (``--set recipe.dynamic=false``): the ablations the arena runs (static vs
# dynamic masking, dropping NSP, whole-word vs token masking, [MASK] vs similar-word corruption). Always
# prefixed: several names (model, tokenizer, dupe_factor) would be ambiguous bare. The number of static
# copies is data.dupe_factor.
RECIPE_KEYS = ("mask_unit", "ngram_probs", "corruption", "dynamic", "builder", "objectives")


def split_settings(mapping: dict[str, Any], source: str) -> dict[str, dict[str, Any]]:
    """Route ``key: value`` settings to the model / train / data section that has the key.

    Keys may be prefixed (``train.lr``) or bare (``lr``); a bare key must belong to exactly one section.
    A YAML file may also hold the sections as nested mappings."""
    out: dict[str, dict[str, Any]] = {name: {} for name in (*_SECTIONS, "recipe")}
    names = {sec: {f.name for f in dataclasses.fields(cls)} for sec, cls in _SECTIONS.items()}
    for key, value in mapping.items():
        if key in out and isinstance(value, dict):
            for sub, v in value.items():
                out[key].update(split_settings({f"{key}.{sub}": v}, source)[key])
            continue
        section, _, bare = key.rpartition(".")
        if section == "recipe":
            if bare not in RECIPE_KEYS:
                raise BertforgeError(f"{source}: unknown key {key!r}; a run may change the recipe's "
                                     f"{', '.join('recipe.' + k for k in RECIPE_KEYS)}")
            out["recipe"][bare] = value
            continue
        owners = [section] if section else [s for s in _SECTIONS if bare in names[s]]
        if section and section not in _SECTIONS:
            raise BertforgeError(f"{source}: unknown section {section!r} in {key!r}; use model., train., data. or "
                                 "recipe.")
        if not owners or bare not in names[owners[0]]:
            valid = sorted(f"{s}.{n}" for s in _SECTIONS for n in names[s])
            raise BertforgeError(f"{source}: unknown key {key!r}; valid keys: {', '.join(valid)}")
        if len(owners) > 1:
            raise BertforgeError(f"{source}: {key!r} is a key of {' and '.join(owners)}; prefix it, e.g. "
                                 f"{owners[0]}.{bare}")
        out[owners[0]][bare] = value
    return out


def make_spec(recipe: str, corpus: str, size: str | None = None, config_file: str | None = None,
              assignments: list[str] | None = None, **paths: str) -> PretrainSpec:
    """The spec of a new run; every setting is checked here, before anything is built or written. ``size``
    None is the default (tiny); the distilbert recipe refuses one, its student is the teacher's shape."""
    r = get_recipe(recipe)
    if size is not None and size not in SIZES:
        raise BertforgeError(f"unknown --size {size!r}; valid sizes: {', '.join(SIZES)}")
    if r.objectives == ("distill",):
        if size is not None:
            raise BertforgeError(f"--size {size}: the distilbert student is every other layer of the teacher, with its "
                                 "width; drop --size (bertforge distill --student-layers N or --layers I,J,... "
                                 "choose its depth)")
        if paths.get("init"):
            raise BertforgeError("--init with the distilbert recipe: the student starts from the --teacher's layers; "
                                 "drop --init")
        if not paths.get("teacher"):
            raise BertforgeError("the distilbert recipe needs --teacher DIR (a checkpoint with an MLM head)")
    elif paths.get("teacher"):
        raise BertforgeError(f"--teacher is for the distilbert recipe (and bertforge distill); recipe {recipe!r} "
                             "trains no student, drop --teacher")
    spec = PretrainSpec(recipe=recipe, corpus=absolute(corpus), size=size or "tiny",
                        **{k: absolute(v) for k, v in paths.items() if v})
    settings: dict[str, dict] = {name: {} for name in (*_SECTIONS, "recipe")}
    layers = ([(read_yaml_mapping(config_file), str(config_file))] if config_file else []) + [
        (parse_assignments(assignments), "--set")]
    specs = []  # (the spec with the settings up to this layer, the layer's name)
    for mapping, source in layers:
        for sec, values in split_settings(mapping, source).items():
            settings[sec].update(values)
        specs.append((dataclasses.replace(spec, model=dict(settings["model"]), train=dict(settings["train"]),
                                          data=dict(settings["data"]), recipe_settings=dict(settings["recipe"])),
                      source))
    error = _check_error(specs[-1][0])
    if error:
        # Name the file or --set that brought the bad value: the first layer whose settings, with those below
        # it, already give this error (checking the file alone up front would refuse a file value that --set
        # completes, e.g. num_heads there and hidden_size here).
        blamed = next(source for partial, source in specs if _check_error(partial) == error)
        raise BertforgeError(error.replace(_SOURCE, blamed))
    return specs[-1][0]


_SOURCE = "<source>"  # stands for the name of a settings layer in check_spec's errors until it is known


def _check_error(spec: PretrainSpec) -> str | None:
    try:
        check_spec(spec, _SOURCE)
    except BertforgeError as exc:
        return str(exc)
    return None


def check_spec(spec: PretrainSpec, source: str) -> None:
    """Every setting of ``spec`` checked, before any long work; errors name ``source`` (a file or --set)."""
    try:
        spec_recipe(spec)
    except BertforgeError as exc:
        raise BertforgeError(f"{source}: {exc}") from None
    train_config(spec, source)
    data_config(spec, source)
    r = get_recipe(spec.recipe)
    if spec.model and (spec.init or r.objectives == ("distill",)):
        key = next(iter(spec.model))
        origin = (f"--init {spec.init}: the architecture comes from the checkpoint" if spec.init else
                  "the distilbert student is every other layer of the teacher, with its architecture")
        raise BertforgeError(f"{source}: model.{key}: {origin}; model settings cannot change, drop it")
    if not (spec.init or r.objectives == ("distill",)):
        # The store's vocabulary is not known yet: a stand-in that a vocab_size setting replaces (the store's
        # own is checked against it in build_model_config).
        model_config(spec.recipe, spec.size, source=source, **{"vocab_size": 30522, **spec.model})


def absolute(path: str | Path) -> str:
    return str(Path(path).expanduser().resolve()) if str(path) else ""


def spec_recipe(spec: PretrainSpec) -> Recipe:
    """The run's recipe: the named one with ``spec.recipe_settings`` applied (checked, strings converted)."""
    r = get_recipe(spec.recipe)
    if not spec.recipe_settings:
        return r
    from .data.builders import BUILDERS
    from .objectives import HEAD_OBJECTIVES

    changes: dict[str, Any] = {}
    for key, value in spec.recipe_settings.items():
        where = f"recipe.{key}={value!r}"
        if key not in RECIPE_KEYS:
            raise BertforgeError(f"unknown recipe setting {key!r}; valid: {', '.join(RECIPE_KEYS)}")
        if key in ("ngram_probs", "objectives"):
            items = [x.strip() for x in value.replace("+", ",").split(",")] if isinstance(value, str) else list(value)
            if key == "ngram_probs":
                try:
                    value = tuple(float(x) for x in items)
                except ValueError:
                    raise BertforgeError(f"{where}: expected comma-separated probabilities") from None
            else:
                value = tuple(items)
                bad = [x for x in value if x not in HEAD_OBJECTIVES]
                if bad or not value:
                    raise BertforgeError(f"{where}: expected objectives from {', '.join(HEAD_OBJECTIVES)}")
        elif key == "dynamic":
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise BertforgeError(f"{where}: expected true or false")
                value = value.lower() in ("true", "1", "yes")
            value = bool(value)
        else:
            valid = {"mask_unit": ("token", "word", "ngram", "span"), "corruption": ("mask", "similar"),
                     "builder": tuple(BUILDERS)}[key]
            if value not in valid:
                raise BertforgeError(f"{where}: expected one of {', '.join(valid)}")
        changes[key] = value
    if r.objectives in (("electra",), ("distill",)) and "objectives" in changes:
        raise BertforgeError(f"recipe {spec.recipe!r} builds its own models; recipe.objectives cannot change")
    return dataclasses.replace(r, **changes)


def train_config(spec: PretrainSpec, source: str = "train settings") -> TrainConfig:
    r = get_recipe(spec.recipe)
    base = {k: (list(v) if isinstance(v, tuple) else v) for k, v in r.optim.items()}
    return from_mapping(TrainConfig, {**base, **spec.train}, source)


def data_config(spec: PretrainSpec, source: str = "data settings") -> DataConfig:
    return from_mapping(DataConfig, spec.data, source)


# ---- assembly --------------------------------------------------------------------------------------
def open_corpus(spec: PretrainSpec):
    from .data.corpus import CorpusStore

    return CorpusStore(spec.corpus)


def load_tokenizer(spec: PretrainSpec, store) -> Any:
    """The tokenizer the model will ship with; it must be the one the store was built with."""
    from .data.tokenizers import AutoTokenizer

    candidates = [spec.tokenizer, str(Path(spec.corpus) / "tokenizer"), spec.init]
    directory = next((c for c in candidates if c and Path(c).is_dir() and _has_tokenizer(Path(c))), None)
    if directory is None:
        raise BertforgeError(f"no tokenizer: the corpus store {spec.corpus} holds no tokenizer/ copy; pass "
                             "--tokenizer DIR (the one the store was built with)")
    tokenizer = AutoTokenizer.from_pretrained(directory)
    store.check_tokenizer(tokenizer)
    if spec.init and directory != spec.init and _has_tokenizer(Path(spec.init)):
        # the checkpoint's ids must mean what the store's ids mean
        store.check_tokenizer(AutoTokenizer.from_pretrained(spec.init))
    return tokenizer


def _has_tokenizer(d: Path) -> bool:
    return any((d / name).is_file() for name in ("tokenizer.json", "vocab.txt", "spm.model", "tokenizer_config.json"))


def build_model_config(spec: PretrainSpec, store) -> ModelConfig:
    r = get_recipe(spec.recipe)
    data = data_config(spec)
    pad = int(store.manifest["special_ids"]["pad"])
    overrides: dict[str, Any] = {"pad_token_id": pad}
    if r.model.get("position_offset"):
        overrides["position_offset"] = pad + 1  # RoBERTa positions start after the padding index
    need = data.max_len + overrides.get("position_offset", 0)
    overrides["max_position_embeddings"] = max(512, need)
    config = model_config(spec.recipe, spec.size, **{"vocab_size": int(store.vocab_size), **overrides, **spec.model},
                          source="model settings")
    if config.vocab_size < store.vocab_size:
        raise BertforgeError(f"model.vocab_size={config.vocab_size}: expected at least {store.vocab_size}, the "
                             f"vocabulary of the corpus store {spec.corpus}")
    return config


def build_masker(r: Recipe, data: DataConfig, store, tokenizer, progress: bool = True):
    from .data.masking import MaskingConfig, Masker

    fields: dict[str, Any] = {"unit": r.mask_unit, "budget": data.mask_budget}
    if r.mask_unit == "ngram":
        fields["ngram_probs"] = r.ngram_probs
    similar = None
    if r.corruption == "similar":
        from .data.similar import SimilarWords

        fields["replacement"] = "similar"
        similar = (SimilarWords.from_synonyms_file(data.synonyms, tokenizer) if data.synonyms
                   else SimilarWords.from_word2vec(store, "train", progress=progress))
    return Masker.from_manifest(MaskingConfig(**fields), store.manifest, similar=similar)


def build_objective(spec: PretrainSpec, config: ModelConfig):
    from . import objectives
    from .heads import PretrainingModel

    r = spec_recipe(spec)
    data = data_config(spec)
    if r.objectives == ("electra",):
        if spec.init:
            raise BertforgeError("--init with the electra recipe is not supported yet: it trains a generator and "
                                 "a discriminator from scratch")
        return objectives.ElectraObjective.from_config(config, generator_fraction=data.generator_fraction,
                                                       rtd_weight=data.rtd_weight)
    heads = objectives.required_heads(r.objectives)
    if spec.init:
        from .auto import AutoModelForPreTraining

        model = AutoModelForPreTraining.from_pretrained(spec.init, heads=heads)
    else:
        model = PretrainingModel(config, heads=heads)
    return objectives.compose(model, r.objectives)


def build_streams(spec: PretrainSpec, store, tokenizer, seed: int, eval_batches: int, step_batches: int = 1,
                  progress: bool = True):
    """(training stream, held-out stream factory or None); ``step_batches``: micro-batches per optimizer step
    (grad_accum), the unit the training stream groups by length; ``progress``: bars for the set-up work
    (MacBERT's word2vec)."""
    from .data.builders import builder
    from .data.collate import PretrainingStream

    r = spec_recipe(spec)
    data = data_config(spec)
    masker = build_masker(r, data, store, tokenizer, progress)
    make = builder(r.builder, max_len=data.max_len)
    dupe = data.dupe_factor or r.dupe_factor
    if data.pack:
        return _packed_streams(spec, r, data, store, make, masker, seed, eval_batches)
    train = PretrainingStream(store, make, masker, data.batch_size, split="train", seed=seed,
                              static_masking=not r.dynamic, dupe_factor=dupe if not r.dynamic else 1,
                              pad_to_multiple_of=data.pad_to_multiple_of, group_by_length=data.group_by_length,
                              step_batches=step_batches)
    if len(store.documents("validation")) == 0:
        warnings.warn(f"corpus store {spec.corpus} has no validation documents: no held-out evaluation")
        return train, None
    held_out = make.build(store, "validation", seed + 1)
    # Under torchrun every process reads whole eval batches and keeps its share of rows: a multiple of the
    # world size, so the split is even.
    world = world_size()
    eval_batch = min(data.batch_size, len(held_out)) // world * world
    if eval_batch == 0:
        warnings.warn(f"corpus store {spec.corpus}: {len(held_out)} held-out sequences are too few for "
                      f"{world} processes: no held-out evaluation")
        return train, None

    def eval_factory():
        # a fresh pass over the same held-out batches each time: same sequences, same masks. Not grouped by
        # length: the loop averages metrics over batches, and batches of short sequences would count as much
        # as long ones (held-out numbers comparable between grouped and ungrouped runs)
        stream = PretrainingStream(store, make, masker, eval_batch, split="validation", seed=seed + 1,
                                   examples=held_out, pad_to_multiple_of=data.pad_to_multiple_of)
        count = stream.batches_per_epoch if not eval_batches else min(eval_batches, stream.batches_per_epoch)
        return itertools.islice(stream, count)

    return train, eval_factory


def _packed_streams(spec: PretrainSpec, r: Recipe, data: DataConfig, store, make, masker, seed: int,
                    eval_batches: int):
    """data.pack: packed train and held-out streams (data/packing.py); masks are drawn fresh every epoch."""
    from .data.packing import PackedStream

    if {"nsp", "sop"} & set(r.objectives):
        raise BertforgeError(f"data.pack=true: recipe {spec.recipe!r} trains {'+'.join(r.objectives)}, which "
                             "classifies each row's [CLS]; packing is for MLM-style recipes, set pack=false")
    train = PackedStream(store, make, masker, data.batch_size, split="train", seed=seed, row_len=data.max_len)
    if len(store.documents("validation")) == 0:
        warnings.warn(f"corpus store {spec.corpus} has no validation documents: no held-out evaluation")
        return train, None
    held_out = make.build(store, "validation", seed + 1)
    world = world_size()

    def eval_factory():
        stream = PackedStream(store, make, masker, data.batch_size // world * world or world, split="validation",
                              seed=seed + 1, row_len=data.max_len, examples=held_out)
        count = stream.batches_per_epoch if not eval_batches else min(eval_batches, stream.batches_per_epoch)
        return itertools.islice(stream, count)

    return train, eval_factory


def exporter(objective, tokenizer, spec: PretrainSpec):
    """Write RUN_DIR/final: the model transformers loads (+ the ELECTRA generator beside it) + tokenizer."""

    def export(out: Path) -> None:

        model = getattr(objective, "model", objective)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        if hasattr(objective, "generator") and hasattr(objective, "discriminator"):
            objective.generator.save_pretrained(out / "generator")
            tokenizer.save_pretrained(out / "generator")
        write_json(out / "bertforge_pretrain.json", spec.to_dict(), ensure_ascii=True)

    return export


def world_size() -> int:
    """Processes training together: torchrun's WORLD_SIZE (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def pretrain(spec: PretrainSpec, run_dir: str | Path, resume: bool = False, progress_bar: bool = True):
    """Run (or resume) a pretraining run; returns the loop's TrainResult."""
    from .train.checkpoint import seed_everything
    from .train.loop import Trainer

    if spec_recipe(spec).objectives == ("distill",):
        # One path for distillation runs, whichever command started them: the student's layers and the loss
        # weights are recorded in (and on resume read from) RUN_DIR/config.json.
        from .distill import distill_pretrain

        return distill_pretrain(spec, run_dir, resume=resume, progress_bar=progress_bar)
    data = data_config(spec)
    world = world_size()
    if data.batch_size % world:
        # The stream yields global micro-batches and each process trains on its contiguous share of rows.
        raise BertforgeError(f"batch_size={data.batch_size} cannot be split evenly over {world} processes; "
                             f"use a multiple of {world}")
    store = open_corpus(spec)
    tokenizer = load_tokenizer(spec, store)
    config = build_model_config(spec, store)
    tcfg = train_config(spec)
    # The same initial weights in every run of this spec and on every rank (the Trainer then seeds process r
    # with seed + r for dropout and sampling); a resumed run overwrites them from its checkpoint.
    seed_everything(tcfg.seed)
    objective = build_objective(spec, config)
    model_cfg = objective.model.config  # with --init or a teacher, the checkpoint's architecture
    if model_cfg.vocab_size < store.vocab_size:
        raise BertforgeError(f"the model has {model_cfg.vocab_size} token ids but the corpus store {spec.corpus} uses "
                             f"{store.vocab_size}; build the store with the model's tokenizer")
    positions = data.max_len + model_cfg.position_offset
    if model_cfg.position_type == "absolute" and positions > model_cfg.max_position_embeddings:
        raise BertforgeError(f"max_len={data.max_len} needs {positions} positions but the model has "
                             f"{model_cfg.max_position_embeddings}; lower max_len")
    train_stream, eval_factory = build_streams(spec, store, tokenizer, tcfg.seed, tcfg.eval_batches, tcfg.grad_accum,
                                               progress=progress_bar and int(os.environ.get("RANK", "0")) == 0)
    trainer = Trainer(objective, train_stream, eval_factory, tcfg, run_dir, resume=resume,
                      export_fn=exporter(objective, tokenizer, spec),
                      run_info={"pretrain": spec.to_dict(), "model": model_cfg.to_dict()}, progress_bar=progress_bar)
    return trainer.train()


def spec_from_run(run_dir: str | Path, assignments: list[str] | None = None) -> PretrainSpec:
    """The spec RUN_DIR was made from, with ``--set`` train/data changes on top (e.g. a larger max_steps to
    extend a finished run). Model settings cannot change: the checkpoint fixes the architecture."""
    path = Path(run_dir) / "config.json"
    try:
        spec = PretrainSpec(**json.loads(path.read_text())["pretrain"])
    except FileNotFoundError:
        raise BertforgeError(f"{path} does not exist: {run_dir} is not a bertforge pretraining run") from None
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise BertforgeError(f"{path}: not a pretraining run config ({exc})") from None
    spec = dataclasses.replace(spec, **_recorded_paths(spec, path))
    if not assignments:
        return spec
    routed = split_settings(parse_assignments(assignments), "--set")
    if routed["model"]:
        raise BertforgeError(f"--resume: model setting {next(iter(routed['model']))!r} cannot change; the "
                             f"checkpoint fixes the architecture (only train. and data. settings may change)")
    if routed["recipe"]:
        raise BertforgeError(f"--resume: recipe setting {next(iter(routed['recipe']))!r} cannot change mid-run")
    spec = dataclasses.replace(spec, train={**spec.train, **routed["train"]}, data={**spec.data, **routed["data"]})
    train_config(spec, "--set")
    data_config(spec, "--set")
    return spec


def _recorded_paths(spec: PretrainSpec, config_path: Path) -> dict[str, str]:
    """The spec's paths made absolute. Older versions recorded them as given, relative to a working directory
    they did not record: the current one is the only guess, and a path missing from it is refused."""
    paths = {}
    for name in ("corpus", "tokenizer", "init", "teacher"):
        value = getattr(spec, name)
        if not value or Path(value).is_absolute():
            continue
        if not Path(value).exists():
            raise BertforgeError(f"{config_path} records {name} {value!r} relative to the directory the run was "
                                 f"started in, and {Path.cwd()} has no {value}; resume from that directory")
        paths[name] = absolute(value)
    return paths


# ---- the demo's main job ---------------------------------------------------------------------------
def named_store(source: str, kind: str, out: Path, vocab_size: int = 8000, lowercase: bool = False,
                validation_fraction: float = 0.02) -> Path:
    """A tokenizer (OUT/tokenizer) trained on a named real corpus and the corpus store (OUT/<source>.store)
    built with it; both are reused when already there. Returns the store directory."""
    import tempfile

    from .data.corpus import build_corpus
    from .data.sources import BuildReport, named_source
    from .data.tokenizer_train import train_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    tok_dir, store_dir = out / "tokenizer", out / f"{source}.store"
    if not (tok_dir / "tokenizer_config.json").is_file():
        print(f"\n== training a {kind} tokenizer on {source} ==")
        with tempfile.TemporaryDirectory() as tmp:
            text = Path(tmp) / f"{source}.txt"
            with text.open("w", encoding="utf-8") as f:
                for piece in named_source(source).pieces(BuildReport()):
                    f.write(piece.text.replace("\n", " ") + "\n")
            train_tokenizer(kind, [text], vocab_size=vocab_size, out=tok_dir, lowercase=lowercase)
    if not (store_dir / "manifest.json").is_file():
        print(f"\n== building the corpus store of {source} ==")
        build_corpus(store_dir, str(tok_dir), sources=[source], validation_fraction=validation_fraction, overwrite=True)
    return store_dir


def demo_pretrain(out: Path, recipe: str = "roberta-wwm-ext", minutes: float = 3.0) -> None:
    """People's Daily -> tokenizer -> corpus store -> a tiny pretraining run -> report + fill-mask."""
    import shutil

    from .data.corpus import CorpusStore

    kind = get_recipe(recipe).tokenizer
    tok_dir, run_dir = out / "tokenizer", out / f"run-{recipe}"
    print("\n== 1-2/3 People's Daily (January 1998): tokenizer and corpus store (gold segmentation as whole-word "
          "boundaries) ==")
    store_dir = named_store("peoples-daily", kind, out)
    store = CorpusStore(store_dir)
    print(f"  {store.num_docs:,} documents, {store.num_sents:,} sentences, {store.num_tokens:,} tokens")
    print(f"\n== 3/3 pretraining a tiny {recipe} for {minutes:g} minutes ==")
    if run_dir.exists():
        shutil.rmtree(run_dir)
    spec = make_spec(recipe, str(store_dir), "tiny", tokenizer=str(tok_dir), assignments=[
        f"max_minutes={minutes}", "max_steps=0", "lr=5e-4", "warmup_ratio=0.05", "batch_size=32", "max_len=128",
        "eval_every=100", "save_every_steps=200", "log_every=10"])
    result = pretrain(spec, run_dir)
    print(f"  {result.step} steps, {result.tokens:,} tokens in {result.elapsed / 60:.1f} min; "
          f"held-out: " + ", ".join(f"{k} {v:.3f}" for k, v in result.eval_metrics.items()))
    print(f"  report: {run_dir / 'report.md'}   model: {run_dir / 'final'}")
    fill_mask_example(run_dir / "final")


def fill_mask_example(model_dir: Path, text: str | None = None) -> None:
    import torch

    from .auto import AutoModelForMaskedLM
    from .data.tokenizers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForMaskedLM.from_pretrained(model_dir).eval()
    mask = tokenizer.convert_ids_to_tokens(tokenizer.mask_token_id)
    text = text or f"中国共产党第十五次全国代表大{mask}。"
    batch = tokenizer(text, return_tensors="pt")
    with torch.inference_mode():
        out = model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
    logits = out["mlm_logits"][0]
    where = (batch["input_ids"][0] == tokenizer.mask_token_id).nonzero().flatten()
    print(f"\n== fill-mask with the new model: {text} ==")
    for pos in where.tolist():
        probs = logits[pos].softmax(-1)
        top = probs.topk(5)
        print("  " + ", ".join(f"{tokenizer.convert_ids_to_tokens(i)} {p:.3f}"
                               for p, i in zip(top.values.tolist(), top.indices.tolist())))
