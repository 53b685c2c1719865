"""THE training loop: one Trainer runs every objective of the family (they all return (loss, metrics)).

    trainer = Trainer(objective, train_stream, eval_stream_factory, TrainConfig(...), "runs/x",
                      export_fn=lambda out: save_model(out))
    result = trainer.train()

- ``objective``: an nn.Module, ``objective(batch) -> (scalar loss, dict of floats)``. Its weights, and any
  ``torch.Generator`` it keeps as an attribute, are checkpointed.
- ``train_stream``: an iterable of batch dicts with ``state_dict()`` / ``load_state_dict()`` for the data
  position. Under torchrun, a stream whose ``world_size`` attribute equals the number of processes is
  already sharded by rank (data.collate.PretrainingStream) and each process trains on what it yields;
  any other stream yields global micro-batches, which every process reads in full and keeps its own
  contiguous slice of. Either way the data position is the same on every rank, so rank 0's is saved.
- ``eval_stream_factory``: ``() -> iterable of batches`` over the held-out split (a fresh pass each call),
  or None; sharded or not by the same rule.

Per optimizer step: ``grad_accum`` micro-batches forward (under autocast) and backward (DDP synchronises
gradients on the last one), gradient clipping, one all-reduce of the step's numbers (loss, tokens, metrics,
the interrupt and clock flags, so every process takes the same decisions), a stop on a non-finite loss
before the weights change, then the optimizer step. A step's learning rate is a pure function of the
counters (optim.lr_multiplier), and every random source is checkpointed, so a resumed run repeats the
uninterrupted one bit for bit (unless the schedule follows a wall-clock budget).
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

import torch
from torch import nn

from ..errors import BertforgeError
from ..files import write_json
from . import distributed
from .checkpoint import (
    CheckpointWarning,
    estimated_bytes,
    find_generators,
    from_loadable,
    latest_checkpoint,
    list_checkpoints,
    model_state,
    prune_checkpoints,
    read_checkpoint,
    rng_state,
    seed_everything,
    set_rng_state,
    to_loadable,
    write_checkpoint,
)
from .config import TrainConfig
from .optim import build_optimizer, lr_multiplier, progress
from .report import MetricsLog, truncate_metrics, write_report

Batch = dict[str, Any]


class DataStream(Protocol):
    def __iter__(self): ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class TrainResult:
    step: int  # optimizer steps completed
    tokens: int  # non-padding training tokens seen, all processes
    elapsed: float  # seconds of training, summed over resumes
    stopped_by: str  # "max_steps" | "max_tokens" | "max_minutes" | "interrupted" | "data"
    checkpoint: Path | None  # the final checkpoint (None on ranks other than 0)
    eval_metrics: dict[str, float] = field(default_factory=dict)  # last held-out evaluation


class Trainer:
    def __init__(
        self,
        objective: nn.Module,
        train_stream: DataStream,
        eval_stream_factory: Callable[[], Iterable[Batch]] | None,
        config: TrainConfig,
        run_dir: str | Path,
        *,
        resume: bool = False,
        export_fn: Callable[[Path], None] | None = None,
        run_info: dict[str, Any] | None = None,
        device: str | torch.device | None = None,
        progress_bar: bool = True,
    ):
        """``resume``: continue from the newest valid checkpoint in ``run_dir`` (else ``run_dir`` must hold
        none). ``export_fn(run_dir / "final")`` is called on rank 0 when the budget is reached.
        ``run_info`` (recipe, model config, corpus...) is written into ``run_dir/config.json`` beside the
        TrainConfig."""
        self.config = config
        self.run_dir = Path(run_dir)
        self.ckpt_root = self.run_dir / "checkpoints"
        self.resume = resume
        self.export_fn = export_fn
        self.run_info = dict(run_info or {})
        self.progress_bar = progress_bar
        self.train_stream = train_stream
        self.eval_stream_factory = eval_stream_factory
        self.dist = distributed.setup(device)
        self.device = self.dist.device
        if config.precision == "fp16" and self.device.type != "cuda":
            raise BertforgeError("precision=fp16 needs a CUDA device; use precision=bf16 on the CPU")
        self._train_presharded = self._presharded(train_stream)

        self.objective = objective.to(self.device)
        problem = self._check_run_dir() if self.dist.is_main else None
        problem = distributed.broadcast_object(problem)
        if problem:
            raise BertforgeError(problem)

        self.optimizer = build_optimizer(self.objective, config)
        self.generators = find_generators(self.objective)
        self.model: nn.Module = self.objective
        if self.dist.distributed:
            from torch.nn.parallel import DistributedDataParallel

            # find_unused_parameters: recipes leave some weights out of the loss (the pooler of an MLM-only
            # model, a head skipped on a batch without pairs); DDP must not wait for their gradients.
            self.model = DistributedDataParallel(
                self.objective, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True,
            )
        self.forward = torch.compile(self.model) if config.compile else self.model
        self.scaler = torch.amp.GradScaler("cuda") if config.precision == "fp16" else None
        self.step = 0
        self.tokens = 0
        self.elapsed = 0.0
        self._interrupted = False
        self._first_signal = 0.0
        self.log: MetricsLog | None = None
        self.checkpoint: Path | None = None  # the newest checkpoint written or resumed from (rank 0)
        self._bar_unit, self._bar_elapsed = "step", 0.0

    # ---- checks before anything is trained ------------------------------------------------------
    def _check_run_dir(self) -> str | None:
        d = self.run_dir
        if not self.resume and (d / "config.json").is_file() and not (d / "metrics.jsonl").exists():
            # a model directory (or a store) given as --out: the run's config.json would overwrite the model's
            return f"{d} holds a config.json but is not a training run (a model directory?); choose another --out"
        if not self.resume and (d / "manifest.json").is_file():
            return f"{d} is a corpus store, not a training run; choose another --out"
        try:
            d.mkdir(parents=True, exist_ok=True)
            probe = d / f".write-test-{id(self)}"
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as exc:
            return f"run directory {d} is not writable ({exc.strerror or exc})"
        existing = list_checkpoints(self.ckpt_root)
        if existing and not self.resume:
            return (f"{d} already holds checkpoints (latest {existing[-1].name}); resume it with --resume "
                    f"or choose another --out")
        if self.resume and not existing:
            return f"{d}: there is no checkpoint to resume from ({self.ckpt_root} holds none)"
        size = estimated_bytes(self.objective)
        need = size * max(1, self.config.keep_last + 1 - len(existing))
        free = shutil.disk_usage(d).free
        if free < need:
            return (f"{d}: only {free / 1e9:.2f} GB free, but checkpoints of about {size / 1e9:.2f} GB "
                    f"(keep_last={self.config.keep_last}, plus one being written) need {need / 1e9:.2f} GB; "
                    f"free some space, lower keep_last or choose another --out")
        return None

    # ---- the run ----------------------------------------------------------------------------------
    def train(self) -> TrainResult:
        handlers = self._install_signal_handlers()
        finished = False
        try:
            self._start()
            result = self._loop()
            finished = True
            return result
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            if self.log is not None:
                self.log.close()
            distributed.teardown(self.dist, wait=finished)

    def _start(self) -> None:
        main = self.dist.is_main
        start_step = 0
        if self.resume:
            start_step = self._load_latest()
        else:
            seed_everything(self.config.seed + self.dist.rank)
        if main:
            self._write_config()
            if self.resume:
                truncate_metrics(self.run_dir, start_step)
            else:
                (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
            self.log = MetricsLog(self.run_dir, purge_step=start_step + 1 if self.resume else None)
            if self.resume:
                self.log.write({"kind": "event", "event": "resume", "step": self.step, "tokens": self.tokens,
                                "world_size": self.dist.world_size})

    def _loop(self) -> TrainResult:
        cfg = self.config
        self.objective.train()
        batches = iter(self.train_stream)
        bar = self._progress_bar()
        clock0, elapsed0 = time.monotonic(), self.elapsed
        last_save_time = time.monotonic()
        last_saved_step = self.step if self.resume else -1
        last_eval_step, eval_metrics = -1, {}
        window: dict[str, float] = {}
        stopped_by = None
        while True:
            stopped_by = self._budget_reached()
            if stopped_by:
                break
            t0 = time.monotonic()
            lr = cfg.lr * lr_multiplier(cfg, self.step, progress(cfg, self.step, self.tokens, self.elapsed))
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            out = self._accumulate(batches)
            if out is None:
                stopped_by = "data"
                break
            loss_sum, tokens, slots, metrics = out
            grad_norm = self._clip()
            now = time.monotonic()
            main = self.dist.is_main
            save_due = main and cfg.save_every_minutes > 0 and now - last_save_time >= 60 * cfg.save_every_minutes
            keys = sorted(metrics)
            control = torch.tensor(
                [loss_sum, tokens, float(self._interrupted), float(save_due),
                 elapsed0 + now - clock0 if main else 0.0, slots, *[metrics[k] for k in keys]],
                dtype=torch.float64, device=self.device)
            control = distributed.all_reduce_sum(control).tolist()
            world = self.dist.world_size
            loss = control[0] / world
            grad_norm = grad_norm.item()
            if not math.isfinite(loss) or (self.scaler is None and not math.isfinite(grad_norm)):
                self._stop_on_nonfinite(loss, grad_norm)
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

            self.step += 1
            self.tokens += int(round(control[1]))
            self.elapsed = control[4]
            step_metrics = {k: v / world for k, v in zip(keys, control[6:])}
            _accumulate_window(window, {"loss": loss, "grad_norm": grad_norm, **step_metrics},
                               tokens=control[1], seconds=time.monotonic() - t0, slots=control[5])
            if bar is not None:  # the last step may pass a token or time budget: the bar stops at 100%
                bar.update(min(self._bar_increment(control[1], elapsed0 + now - clock0), max(0, bar.total - bar.n)))
            if self.step % cfg.log_every == 0:
                self._log_train(window, lr, bar)
                window = {}
            if cfg.eval_every and self.step % cfg.eval_every == 0:
                eval_metrics, last_eval_step = self.evaluate(), self.step
            if (cfg.save_every_steps and self.step % cfg.save_every_steps == 0) or control[3] > 0:
                self.save()
                last_saved_step, last_save_time = self.step, time.monotonic()
            if control[2] > 0:
                stopped_by = "interrupted"
                break

        if bar is not None:
            bar.close()
        if window:
            self._log_train(window, lr, None)
        if stopped_by != "interrupted" and last_eval_step != self.step and self.step > 0:
            eval_metrics = self.evaluate()
        if last_saved_step != self.step and self.step > 0:
            self.save()
        if self.dist.is_main:
            self.log.write({"kind": "event", "event": "stop", "reason": stopped_by, "step": self.step,
                            "tokens": self.tokens, "elapsed": self.elapsed})
            write_report(self.run_dir, {"stopped by": stopped_by})
            if stopped_by == "interrupted":
                print(f"bertforge: interrupted at step {self.step}; checkpoint {self.checkpoint}; "
                      f"continue with --resume {self.run_dir}", file=sys.stderr)
            elif self.export_fn is not None:
                self.export_fn(self.run_dir / "final")
        return TrainResult(self.step, self.tokens, self.elapsed, stopped_by, self.checkpoint, eval_metrics)

    def _budget_reached(self) -> str | None:
        cfg = self.config
        if cfg.max_steps and self.step >= cfg.max_steps:
            return "max_steps"
        if cfg.max_tokens and self.tokens >= cfg.max_tokens:
            return "max_tokens"
        if cfg.max_minutes and self.elapsed >= 60 * cfg.max_minutes:
            return "max_minutes"
        return None

    def _autocast(self):
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.config.precision)
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    def _presharded(self, stream: Any) -> bool:
        """Whether ``stream`` already yields this rank's share (see the module docstring)."""
        world = getattr(stream, "world_size", 1)
        if world not in (1, self.dist.world_size):
            raise BertforgeError(f"the data stream was built for world_size={world}, but {self.dist.world_size} "
                                 f"processes are training")
        return self.dist.world_size > 1 and world == self.dist.world_size

    def _batch(self, batch: Batch, presharded: bool) -> Batch:
        if not presharded:
            batch = distributed.shard_batch(batch, self.dist.rank, self.dist.world_size)
        return {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                for k, v in batch.items()}

    def _accumulate(self, batches) -> tuple[float, float, float, dict[str, float]] | None:
        """Forward and backward ``grad_accum`` micro-batches. Returns (mean loss, non-padding tokens, token
        slots (padding included), mean metrics) of this process, or None when the stream ended (the partial
        step is discarded)."""
        accum = self.config.grad_accum
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        tokens = torch.zeros((), dtype=torch.float64, device=self.device)
        slots = 0
        metric_sums: dict[str, float] = {}
        for i in range(accum):
            try:
                batch = self._batch(next(batches), self._train_presharded)
            except StopIteration:
                self.optimizer.zero_grad(set_to_none=True)
                return None
            mask = batch.get("attention_mask")
            tokens += mask.count_nonzero() if mask is not None else batch["input_ids"].numel()  # packed masks hold sequence numbers
            slots += batch["input_ids"].numel()
            sync = i == accum - 1
            no_sync = self.model.no_sync() if self.dist.distributed and not sync else contextlib.nullcontext()
            with no_sync:
                with self._autocast():
                    loss, metrics = self.forward(batch)
                scaled = loss / accum
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            loss_sum += loss.detach().double()
            for k, v in metrics.items():
                metric_sums[k] = metric_sums.get(k, 0.0) + float(v)
        return loss_sum.item() / accum, tokens.item(), slots, {k: v / accum for k, v in metric_sums.items()}

    def _clip(self) -> torch.Tensor:
        """Unscale (fp16) and clip the global gradient norm; returns the norm before clipping."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not params:
            return torch.zeros(())
        return torch.nn.utils.clip_grad_norm_(params, self.config.clip_norm or math.inf)

    def _stop_on_nonfinite(self, loss: float, grad_norm: float) -> None:
        what = f"loss is {loss}" if not math.isfinite(loss) else f"gradient norm is {grad_norm}"
        last = list_checkpoints(self.ckpt_root)
        kept = f"the last good checkpoint is {last[-1]}" if last else "no checkpoint was written yet"
        if self.dist.is_main:
            self.log.write({"kind": "event", "event": "stop", "reason": "nonfinite", "step": self.step,
                            "tokens": self.tokens, "elapsed": self.elapsed})
            write_report(self.run_dir, {"stopped by": f"non-finite value at step {self.step + 1}"})
        raise BertforgeError(
            f"step {self.step + 1}: the training {what}; stopped before updating the weights, {kept}. "
            f"Try a lower lr, a longer warmup, clip_norm, or precision=fp32"
        )

    # ---- evaluation -------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """Mean loss and metrics over (at most ``eval_batches``) held-out batches, all processes.

        Runs with the training RNG states saved and restored, so evaluating never changes what training
        draws next (and a resumed run matches an uninterrupted one wherever evaluations fall)."""
        if self.eval_stream_factory is None:
            return {}
        saved = rng_state(self.generators)
        self.objective.eval()
        sums: dict[str, float] = {}
        count = 0
        try:
            with torch.no_grad(), self._autocast():
                stream = self.eval_stream_factory()
                presharded = self._presharded(stream)
                for i, batch in enumerate(stream):
                    if self.config.eval_batches and i >= self.config.eval_batches:
                        break
                    loss, metrics = self.objective(self._batch(batch, presharded))
                    for k, v in {"loss": float(loss), **metrics}.items():
                        sums[k] = sums.get(k, 0.0) + float(v)
                    count += 1
        finally:
            self.objective.train()
            set_rng_state(saved, self.generators)
        keys = sorted(sums)
        totals = distributed.all_reduce_sum(
            torch.tensor([count, *[sums[k] for k in keys]], dtype=torch.float64, device=self.device)).tolist()
        if totals[0] == 0:
            return {}
        result = {k: v / totals[0] for k, v in zip(keys, totals[1:])}
        if self.dist.is_main:
            self.log.write({"kind": "eval", "step": self.step, "tokens": self.tokens, **result,
                            "elapsed": round(self.elapsed, 3)})
        return result

    # ---- checkpoints ------------------------------------------------------------------------------
    def save(self) -> Path | None:
        """Write a checkpoint (rank 0) holding every process's RNG state; returns its path on rank 0."""
        rngs = distributed.all_gather_objects(rng_state(self.generators))
        if not self.dist.is_main:
            return None
        state = {
            "step": self.step, "tokens": self.tokens, "elapsed": self.elapsed,
            "world_size": self.dist.world_size, "rng": rngs,
            "data": to_loadable(self.train_stream.state_dict()),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }
        meta = {"tokens": self.tokens, "elapsed": round(self.elapsed, 3), "world_size": self.dist.world_size}
        try:
            path = write_checkpoint(self.ckpt_root, self.step, self.objective, self.optimizer.state_dict(),
                                    state, meta)
        except OSError as exc:
            raise BertforgeError(f"cannot write a checkpoint under {self.ckpt_root} ({exc.strerror or exc}); "
                                 f"the previous checkpoints are intact") from exc
        prune_checkpoints(self.ckpt_root, self.config.keep_last)
        self.checkpoint = path
        self.log.write({"kind": "event", "event": "checkpoint", "step": self.step, "tokens": self.tokens,
                        "path": str(path.relative_to(self.run_dir))})
        return path

    def _load_latest(self) -> int:
        """Restore weights, optimizer, counters, data position and RNG states from the newest valid
        checkpoint. Rank 0 reads the files and sends their contents to the others, so only node 0
        needs the run directory."""
        payload = None
        if self.dist.is_main:
            path = latest_checkpoint(self.ckpt_root)
            if path is None:
                payload = f"{self.run_dir}: no complete checkpoint to resume from; start again without --resume"
            else:
                optimizer_state, state, _ = read_checkpoint(path, self.objective, self.device)
                payload, self.checkpoint = (optimizer_state, state), path
        payload = distributed.broadcast_object(payload)
        if isinstance(payload, str):
            raise BertforgeError(payload)
        optimizer_state, state = payload
        distributed.broadcast_tensors(list(model_state(self.objective).values()))
        self.optimizer.load_state_dict(optimizer_state)
        self.step, self.tokens, self.elapsed = state["step"], state["tokens"], state["elapsed"]
        self.train_stream.load_state_dict(from_loadable(state["data"]))
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        if state["world_size"] == self.dist.world_size:
            set_rng_state(state["rng"][self.dist.rank], self.generators)
        else:
            if self.dist.is_main:
                warnings.warn(f"resuming a {state['world_size']}-process run with {self.dist.world_size} processes: "
                              f"random states are re-seeded, so the run will not repeat the original exactly",
                              CheckpointWarning, stacklevel=4)
            seed_everything(self.config.seed + self.dist.rank + 1000 * self.step)
        return self.step

    def _write_config(self) -> None:
        path = self.run_dir / "config.json"
        new = {"train": self.config.to_dict(), **self.run_info, "world_size": self.dist.world_size}
        if self.resume and path.is_file():
            try:
                old = json.loads(path.read_text()).get("train", {})
            except (OSError, json.JSONDecodeError):
                old = {}
            changed = [f"{k} {old[k]!r} -> {v!r}" for k, v in new["train"].items() if k in old and old[k] != v]
            if changed:
                warnings.warn(f"resuming {self.run_dir} with changed settings: {', '.join(changed)}",
                              CheckpointWarning, stacklevel=4)
        write_json(path, new, default=str, ensure_ascii=True)

    # ---- progress, logging, signals ---------------------------------------------------------------
    def _progress_bar(self):
        if not (self.progress_bar and self.dist.is_main):
            return None
        from tqdm.auto import tqdm

        cfg = self.config
        if cfg.max_steps:
            self._bar_unit = "step"
            return tqdm(total=cfg.max_steps, initial=self.step, unit="step", dynamic_ncols=True)
        if cfg.max_tokens:
            self._bar_unit = "tok"
            return tqdm(total=cfg.max_tokens, initial=self.tokens, unit="tok", unit_scale=True, dynamic_ncols=True)
        # whole seconds: tqdm prints a float count with all its digits ("179.2676299829982/180")
        self._bar_unit, self._bar_elapsed = "s", self.elapsed
        return tqdm(total=round(60 * cfg.max_minutes), initial=int(self.elapsed), unit="s", dynamic_ncols=True)

    def _bar_increment(self, tokens: float, elapsed: float) -> float:
        if self._bar_unit == "step":
            return 1
        if self._bar_unit == "tok":
            return tokens
        delta, self._bar_elapsed = int(elapsed) - int(self._bar_elapsed), elapsed
        return max(0, delta)

    def _log_train(self, window: dict[str, float], lr: float, bar) -> None:
        n = window.pop("_n")
        tokens, seconds, slots = window.pop("_tokens"), window.pop("_seconds"), window.pop("_slots")
        means = {k: v / n for k, v in window.items()}
        speed = tokens / seconds if seconds > 0 else 0.0
        # share of the window's batch slots (rows x length, all processes) that held padding
        padding = round(1 - tokens / slots, 4) if slots else 0.0
        if self.dist.is_main:
            self.log.write({"kind": "train", "step": self.step, "tokens": self.tokens, "lr": lr, **means,
                            "padding": padding, "tokens_per_s": round(speed, 1), "elapsed": round(self.elapsed, 3)})
            if bar is not None:
                bar.set_postfix(loss=f"{means['loss']:.4f}", lr=f"{lr:.2e}", tok_s=f"{speed:,.0f}", refresh=False)

    def _install_signal_handlers(self) -> dict:
        """SIGINT (Ctrl-C) and SIGTERM (torchrun forwarding a stop, a scheduler's preemption) finish the
        current step, write a checkpoint and return. A repeat within a second is the same stop delivered
        twice (terminal + launcher); a later one aborts at once."""
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum, frame):
            now = time.monotonic()
            if self._interrupted:
                if now - self._first_signal < 1.0:
                    return
                raise KeyboardInterrupt
            self._interrupted, self._first_signal = True, now
            if self.dist.is_main:
                print("\nbertforge: stopping after this step and writing a checkpoint "
                      "(interrupt again to abort at once)", file=sys.stderr)

        return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}


def _accumulate_window(window: dict[str, float], values: dict[str, float], tokens: float, seconds: float,
                       slots: float) -> None:
    for k, v in values.items():
        window[k] = window.get(k, 0.0) + v
    window["_n"] = window.get("_n", 0) + 1
    window["_tokens"] = window.get("_tokens", 0.0) + tokens
    window["_seconds"] = window.get("_seconds", 0.0) + seconds
    window["_slots"] = window.get("_slots", 0.0) + slots
