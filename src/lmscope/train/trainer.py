"""The training loop: `Trainer(config).run()` trains, evaluates, samples, checkpoints and exports.

One optimizer step:
    rows   <- the next global batch from the row stream (deterministic, resumable)
    loss   =  sum of token losses / number of counted targets in the *global* batch
              (so gradient accumulation and data parallelism give the same gradient)
    grads  -> clipped by global norm (norm and clip count logged) -> AdamW step
Everything that influences the next step (weights, optimizer, step, stream position, RNG) is in
each checkpoint, so a run killed at any moment and resumed continues exactly.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from lmscope.data.dataset import IGNORE_INDEX, TokenSplit
from lmscope.data.errors import DataError
from lmscope.data.manifest import read_manifest
from lmscope.data.tokenizer import TextTokenizer
from lmscope.files import atomic_write_text, new_temp_dir, replace_dir
from lmscope.model.modes import eval_mode
from lmscope.model.transformer import Transformer
from lmscope.train import distributed as dist
from lmscope.train import state as st
from lmscope.train.batches import RowStream, StreamPosition, micro_slices
from lmscope.train.checkpoints import CheckpointManager
from lmscope.train.config import TrainConfig
from lmscope.train.errors import CheckpointWriteError, ResumeError, TrainConfigError, TrainError
from lmscope.train.finetune import (
    FreezePlan,
    apply_lora,
    load_adapter_weights,
    merge_lora,
    save_adapter,
)
from lmscope.train.loggers import MetricLoggers
from lmscope.train.model_setup import build_model, check_architecture, load_full_weights
from lmscope.train.optim import make_optimizer, split_params
from lmscope.train.record import hardware, new_history
from lmscope.train.sampling import sample
from lmscope.train.schedules import Schedule

RECORD_FILE = "training_record.json"


class Callback:
    """Hooks for tests and tools; every method is optional."""

    def on_step_end(self, trainer: Trainer, step: int, loss: float) -> None: ...

    def on_checkpoint(self, trainer: Trainer, step: int, path: Path) -> None: ...


@dataclass
class LoopState:
    """Everything about the loop (beyond weights, optimizer and RNG) that resuming restores."""

    step: int = 0
    position: StreamPosition = field(default_factory=StreamPosition)
    tokens_seen: int = 0
    clip_count: int = 0
    best_val_loss: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    eval_count: int = 0
    interval_loss: float = 0.0  # loss sum and targets since the last log line
    interval_targets: int = 0
    last_loss: float | None = None
    wall_time_s: float = 0.0
    history: dict[str, list[dict[str, Any]]] = field(default_factory=new_history)
    resumed_from: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "position"}
        data["position"] = {"epoch": self.position.epoch, "cursor": self.position.cursor}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoopState:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        position = known.pop("position", {"epoch": 0, "cursor": 0})
        return cls(position=StreamPosition(**position), **known)


@dataclass
class TrainResult:
    out_dir: Path
    model_dir: Path | None  # a full checkpoint lmscope can load (None: LoRA without merging)
    adapter_dir: Path | None
    record: dict[str, Any]
    rank: int = 0  # under torchrun, only rank 0 writes files


def _device(requested: str, local_rank: int) -> torch.device:
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        return torch.device("cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainConfigError(f"train.device is {requested!r} but no CUDA device is available")
    return device


def _precision(requested: str, device: torch.device) -> str:
    if requested == "auto":
        supported = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return "bf16" if supported else "fp32"
    return requested


class Trainer:
    def __init__(
        self,
        config: TrainConfig,
        *,
        resume: bool | None = None,
        resume_from: str | Path | None = None,
        callbacks: list[Callback] | None = None,
    ) -> None:
        """resume: None (resume if out_dir has a checkpoint), True (must resume), False (refuse
        an out_dir that already has checkpoints). resume_from: a specific step checkpoint."""
        config.validate()
        self.config = config
        self.resume = resume
        self.resume_from = Path(resume_from) if resume_from is not None else None
        self.callbacks = callbacks or []
        self.out_dir = Path(config.out_dir)
        self.dist = dist.DistInfo()
        self.loggers: MetricLoggers | None = None

    # ---- set-up ------------------------------------------------------------------------------
    def _setup(self) -> None:
        c = self.config
        self.device = _device(c.train.device, int(os.environ.get("LOCAL_RANK", "0")))
        self.dist = dist.init_distributed(self.device.type)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        self.precision = _precision(c.train.dtype, self.device)
        self.manifest = read_manifest(c.data.dir)
        self.tokenizer = TextTokenizer.load(c.data.dir)
        random.seed(c.train.seed)
        np.random.seed(c.train.seed % 2**32)

        built = build_model(c, self.tokenizer)
        self.core: Transformer = built.model.to(self.device)
        self.hf_tokenizer = built.hf_tokenizer
        self.model_source = built.source
        self.peft: Any = None
        self.plan = FreezePlan.from_config(c.finetune, self.core.cfg.n_layers)
        if c.finetune.lora is not None:
            self.peft = apply_lora(self.core, c.finetune.lora, c.init_from)
        # The optimizer holds every parameter that will ever train; frozen ones have no grads.
        if self.plan.active:
            self.plan.apply(self.core, step=sys.maxsize)
        self.groups = split_params(self.core, c.optim.decay_embeddings)
        self.optimizer = make_optimizer(self.groups, c.optim)
        self.trainable = [p for _, p in self.groups.decay + self.groups.no_decay]
        self.schedule = Schedule.from_config(c.optim.lr, c.schedule, c.train.max_steps)

        self.train_split = TokenSplit(c.data.dir, "train")
        self.train_rows = self.train_split.rows(c.data.context, c.data.pack)
        if len(self.train_rows) == 0:
            raise DataError(
                f"the train split of {c.data.dir} has no rows of 2 or more tokens; add text"
            )
        keys = None
        if c.data.curriculum is not None:
            keys = self.train_split.row_scores(self.train_rows, c.data.curriculum)
        self.stream = RowStream(len(self.train_rows), c.train.seed, keys, c.data.curriculum_epochs)
        self.val_split, self.val_rows = self._optional_split("val")
        self.test_split, self.test_rows = self._optional_split("test")
        pad = self.tokenizer.pad_id
        self.pad_id = 0 if pad is None else pad
        self.global_batch = c.train.batch_size * c.train.grad_accum * self.dist.world_size

        self.checkpoints = CheckpointManager(
            self.out_dir / "checkpoints", c.checkpoint.keep_last, c.checkpoint.keep_best
        )
        self.loop = LoopState()
        self.net: nn.Module = self.core

    def _optional_split(self, name: str) -> tuple[TokenSplit | None, np.ndarray]:
        split = TokenSplit(self.config.data.dir, name)
        rows = split.rows(self.config.data.context, self.config.data.pack)
        return (split if len(rows) else None), rows

    def _wrap(self) -> None:
        """(Re)build the DDP wrapper; needed again whenever the set of trainable params changes."""
        if not self.dist.enabled:
            self.net = self.core
            return
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        self.net = DistributedDataParallel(self.core, device_ids=ids)

    # ---- resume --------------------------------------------------------------------------------
    def _find_resume(self) -> Path | None:
        if self.resume_from is not None:
            if not self.resume_from.is_dir():
                raise ResumeError(f"no checkpoint at {self.resume_from}")
            return self.resume_from
        latest = self.checkpoints.latest()
        if latest is None:
            if self.resume:
                raise ResumeError(
                    f"nothing to resume: {self.checkpoints.root} holds no complete checkpoint"
                )
            return None
        if self.resume is False:
            raise ResumeError(
                f"{self.out_dir} already holds checkpoints (latest {latest.name}); resume with "
                "--resume, or pick another out_dir"
            )
        return latest

    def _restore(self, directory: Path) -> None:
        saved = st.read_trainer_state(directory)
        check_architecture(saved.get("model_config", {}), self.core.cfg, directory)
        if self.peft is not None:
            load_adapter_weights(self.peft, directory / "adapter")
        else:
            if saved.get("lora"):
                raise ResumeError(
                    f"{directory} is a LoRA checkpoint but this run has no finetune.lora; "
                    "use the config that wrote it"
                )
            load_full_weights(self.core, directory)
        st.load_optimizer(self.optimizer, self.groups.names, directory)
        self.loop = LoopState.from_dict(saved["loop"])
        self.stream.position = StreamPosition(self.loop.position.epoch, self.loop.position.cursor)
        self.loop.resumed_from.append(self.loop.step)
        st.restore_rng(directory, self.dist.rank)
        st.restore_python_rng(saved["python_rng"])

    # ---- one step ------------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _loss_sum(self, module: nn.Module, split: TokenSplit, rows: np.ndarray) -> torch.Tensor:
        inputs, targets = split.batch(rows, self.config.data.context, self.pad_id)
        inputs, targets = inputs.to(self.device), targets.to(self.device)
        with self._autocast():
            logits = module(inputs)
        return F.cross_entropy(
            logits.float().flatten(0, 1),
            targets.flatten(),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )

    def _train_step(self) -> tuple[float, float, int, int]:
        """One optimizer step; returns (loss, grad norm, counted targets, input tokens)."""
        c = self.config
        lr = self.schedule(self.loop.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        rows = self.train_rows[self.stream.next(self.global_batch)]
        targets = max(self.train_split.target_count(rows), 1)
        scale = self.dist.world_size / targets  # DDP averages gradients over processes
        slices = micro_slices(
            rows, self.dist.rank, self.dist.world_size, c.train.grad_accum, c.train.batch_size
        )
        loss_total = torch.zeros((), device=self.device)
        tokens = 0
        for i, micro in enumerate(slices):
            last = i == len(slices) - 1
            sync = contextlib.nullcontext() if last or not self.dist.enabled else self.net.no_sync()  # type: ignore[operator]
            with sync:
                loss_sum = self._loss_sum(self.net, self.train_split, micro)
                (loss_sum * scale).backward()
            loss_total += loss_sum.detach()
            tokens += int((micro[:, 1] - 1).sum())
        clip = c.optim.grad_clip if c.optim.grad_clip > 0 else math.inf
        norm = float(torch.nn.utils.clip_grad_norm_(self.trainable, clip))
        if c.optim.grad_clip > 0 and norm > c.optim.grad_clip:
            self.loop.clip_count += 1
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        summed = dist.all_reduce_sum(
            torch.stack([loss_total, torch.tensor(float(tokens), device=self.device)]), self.dist
        )
        return float(summed[0]) / targets, norm, targets, int(summed[1])

    # ---- evaluation and samples ------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, split: TokenSplit, rows: np.ndarray, max_batches: int | None) -> float:
        """Mean loss per counted target over the first `rows` of `split` (all processes
        together)."""
        c = self.config
        if max_batches is not None:  # in global batches, so the rows do not depend on the
            rows = rows[: max_batches * self.global_batch]  # split into processes/micro-batches
        share = np.array_split(rows, self.dist.world_size)[self.dist.rank]
        total = torch.zeros(2, dtype=torch.float64, device=self.device)
        with eval_mode(self.core):
            for begin in range(0, len(share), c.train.batch_size):
                chunk = share[begin : begin + c.train.batch_size]
                total[0] += self._loss_sum(self.core, split, chunk).double()
                total[1] += split.target_count(chunk)
        total = dist.all_reduce_sum(total, self.dist)
        return float(total[0] / total[1]) if total[1] > 0 else math.nan

    def _samples(self, step: int) -> None:
        s = self.config.sample
        if not s.prompts or not self.dist.is_main:
            return
        for i, prompt in enumerate(s.prompts):
            text = sample(
                self.core,
                self.tokenizer,
                prompt,
                max_new_tokens=s.max_new_tokens,
                temperature=s.temperature,
                top_k=s.top_k,
                seed=self.config.train.seed + step * 1000 + i,
            )
            self.loop.history["samples"].append({"step": step, "prompt": prompt, "text": text})
            self._say(f"[sample step {step}] {prompt!r} -> {text!r}")
            if self.loggers is not None:
                self.loggers.text(step, f"sample/{i}", f"**{prompt}**{text}")

    def _eval_and_track(self, step: int) -> bool:
        """Evaluate, track the best loss and sample; return whether to stop early."""
        if self.val_split is None:
            return False
        e = self.config.eval
        loss = self.evaluate(self.val_split, self.val_rows, e.batches)
        ppl = math.exp(min(loss, 700.0))
        self.loop.eval_count += 1
        self.loop.history["eval"].append({"step": step, "val_loss": loss, "val_ppl": ppl})
        best = self.loop.best_val_loss
        is_best = best is None or loss < best - e.min_delta
        if is_best:
            self.loop.best_val_loss, self.loop.best_step = loss, step
            self.loop.evals_without_improvement = 0
        else:
            self.loop.evals_without_improvement += 1
        if self.loggers is not None:
            self.loggers.scalars(step, {"val/loss": loss, "val/perplexity": ppl})
        self._say(
            f"step {step}: val loss {loss:.4f} (perplexity {ppl:.2f})" + (" *" if is_best else "")
        )
        if self.loop.eval_count % self.config.sample.every_evals == 0:
            self._samples(step)
        return e.patience is not None and self.loop.evals_without_improvement >= e.patience

    def _say(self, text: str) -> None:
        if self.dist.is_main and self.config.log.progress:
            tqdm.write(text)

    # ---- checkpoints -------------------------------------------------------------------------------
    def _trainer_state(self) -> dict[str, Any]:
        self.loop.position = StreamPosition(self.stream.position.epoch, self.stream.position.cursor)
        return {
            "step": self.loop.step,
            "loop": self.loop.to_dict(),
            "python_rng": st.python_rng_state(),
            "model_config": self.core.cfg.to_dict(),
            "lora": self.peft is not None,
            "world_size": self.dist.world_size,
            "config": self.config.to_dict(),
        }

    def _write_checkpoint(
        self, tmp: Path, rng: list[dict[str, torch.Tensor]], state: dict[str, Any]
    ) -> None:
        from lmscope.zoo.checkpoint import save_checkpoint

        if self.peft is not None:
            self.peft.save_pretrained(
                str(tmp / "adapter"), safe_serialization=True, save_embedding_layers=False
            )
        else:
            save_checkpoint(self.core, tmp, tokenizer=self.hf_tokenizer)
        st.save_optimizer(self.optimizer, self.groups.names, tmp)
        st.save_rng(rng, tmp)
        st.write_trainer_state(tmp, state)

    def save_checkpoint(self) -> Path | None:
        """Write a step checkpoint (rank 0), with every process's RNG state."""
        is_best = self.loop.best_step == self.loop.step
        rng = dist.gather_objects(st.capture_rng(), self.dist)
        state = self._trainer_state()
        path: Path | None = None
        error = ""
        if self.dist.is_main:
            try:
                path = self.checkpoints.save(
                    self.loop.step, lambda tmp: self._write_checkpoint(tmp, rng, state), is_best
                )
            except CheckpointWriteError as err:
                error = str(err)
        error = dist.broadcast_object(error, self.dist)
        if error:
            raise CheckpointWriteError(error)
        if path is not None:
            for callback in self.callbacks:
                callback.on_checkpoint(self, self.loop.step, path)
        return path

    # ---- the loop --------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        try:
            self._setup()
            return self._run()
        finally:
            if self.loggers is not None:
                self.loggers.close()
            dist.shutdown(self.dist)

    def _run(self) -> TrainResult:
        c = self.config
        resume_dir = self._find_resume()
        if resume_dir is not None:
            self._restore(resume_dir)
            self._say(f"resumed from {resume_dir} at step {self.loop.step}")
        else:
            torch.manual_seed(c.train.seed + self.dist.rank)
        if self.plan.active:
            self.plan.apply(self.core, self.loop.step)
        self.core.train()
        self._wrap()
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.loggers = MetricLoggers(self.out_dir, c.log.tensorboard, c.log.mlflow, c.to_dict())
        bar = tqdm(
            total=c.train.max_steps,
            initial=self.loop.step,
            desc="train",
            unit="step",
            disable=not (c.log.progress and self.dist.is_main),
            dynamic_ncols=True,
        )
        if c.eval.at_start and self.loop.step == 0 and resume_dir is None:
            self._eval_and_track(0)
        session_start = time.perf_counter()
        wall_before = self.loop.wall_time_s
        stopped = "max_steps"
        last_eval = last_ckpt = -1 if resume_dir is None else self.loop.step
        while self.loop.step < c.train.max_steps:
            if self.plan.unfreeze_every is not None and self.plan.apply(self.core, self.loop.step):
                self._wrap()
                self._say(
                    f"step {self.loop.step}: {self.plan.frozen_blocks(self.loop.step)} blocks frozen"
                )
            tick = time.perf_counter()
            loss, norm, targets, tokens = self._train_step()
            speed = tokens / max(time.perf_counter() - tick, 1e-9)
            self.loop.step += 1
            step = self.loop.step
            self._record_step(loss, norm, targets, tokens, speed)
            bar.update(1)
            bar.set_postfix(
                loss=f"{loss:.4f}",
                lr=f"{self.optimizer.param_groups[0]['lr']:.2e}",
                gnorm=f"{norm:.2f}",
                tok_s=f"{speed:.0f}",
                refresh=False,
            )
            stop = False
            if c.eval.every and step % c.eval.every == 0:
                stop = self._eval_and_track(step)
                last_eval = step
            self.loop.wall_time_s = wall_before + time.perf_counter() - session_start
            out_of_time = self._out_of_time()
            if c.checkpoint.every and step % c.checkpoint.every == 0:
                self.save_checkpoint()
                last_ckpt = step
            for callback in self.callbacks:
                callback.on_step_end(self, step, loss)
            if stop:
                stopped = "early_stopping"
                self._say(
                    f"early stopping at step {step}: no improvement in {c.eval.patience} evaluations"
                )
                break
            if out_of_time:
                stopped = "max_minutes"
                break
        bar.close()
        step = self.loop.step
        if last_eval != step:
            self._eval_and_track(step)
        if last_ckpt != step:
            self.save_checkpoint()
        self.loop.wall_time_s = wall_before + time.perf_counter() - session_start
        return self._finish(stopped)

    def _record_step(
        self, loss: float, norm: float, targets: int, tokens: int, speed: float
    ) -> None:
        """Count the step and, every log.every steps, log the mean loss since the last line."""
        step = self.loop.step
        self.loop.tokens_seen += tokens
        self.loop.last_loss = loss
        self.loop.interval_loss += loss * targets
        self.loop.interval_targets += targets
        if step % self.config.log.every and step != self.config.train.max_steps:
            return
        mean = self.loop.interval_loss / max(self.loop.interval_targets, 1)
        self.loop.interval_loss, self.loop.interval_targets = 0.0, 0
        lr = self.optimizer.param_groups[0]["lr"]
        entry = {
            "step": step,
            "loss": mean,
            "lr": lr,
            "grad_norm": norm,
            "tokens_per_s": speed,
            "clip_count": self.loop.clip_count,
        }
        self.loop.history["train"].append(entry)
        if self.loggers is not None:
            scalars = {f"train/{k}": float(v) for k, v in entry.items() if k != "step"}
            self.loggers.scalars(step, scalars)

    def _out_of_time(self) -> bool:
        limit = self.config.train.max_minutes
        if limit is None:
            return False
        over = self.loop.wall_time_s >= 60 * limit
        return bool(dist.broadcast_object(over, self.dist))  # every process stops together

    # ---- the end -----------------------------------------------------------------------------------
    def _finish(self, stopped: str) -> TrainResult:
        c = self.config
        final_val = self.loop.history["eval"][-1]["val_loss"] if self.loop.history["eval"] else None
        chosen = self._choose_final_weights()
        test_loss = None
        if c.eval.test_at_end and self.test_split is not None:
            test_loss = self.evaluate(self.test_split, self.test_rows, None)
        counts = self._parameter_counts()
        record = {
            "config": c.to_dict(),
            "model_source": self.model_source,
            "model_config": self.core.cfg.to_dict(),
            "parameters": counts,
            "data_manifest": self.manifest,
            "metrics": self.loop.history,
            "final": {
                "step": self.loop.step,
                "stopped": stopped,
                "train_loss": self.loop.last_loss,
                "val_loss": final_val,
                "val_perplexity": None if final_val is None else math.exp(min(final_val, 700.0)),
                "test_loss": test_loss,
                "best_step": self.loop.best_step,
                "best_val_loss": self.loop.best_val_loss,
                "exported_weights": chosen,
            },
            "tokens_seen": self.loop.tokens_seen,
            "clip_count": self.loop.clip_count,
            "resumed_from_steps": self.loop.resumed_from,
            "wall_time_s": self.loop.wall_time_s,
            "hardware": hardware(self.device, self.precision, self.dist.world_size),
            "finetune": {
                "init_from": c.init_from,
                "lora": None if c.finetune.lora is None else c.finetune.lora.model_dump(),
                "freeze_layers": c.finetune.freeze_layers,
                "freeze_embeddings": c.finetune.freeze_embeddings,
                "unfreeze_every": c.finetune.unfreeze_every,
            },
        }
        model_dir = adapter_dir = None
        if self.dist.is_main:
            model_dir, adapter_dir = self._export(record)
            atomic_write_text(self.out_dir / RECORD_FILE, _dumps(record))
            self._say(
                f"done: {stopped} at step {self.loop.step}; model in {model_dir or adapter_dir}"
            )
        dist.barrier(self.dist)
        return TrainResult(self.out_dir, model_dir, adapter_dir, record, self.dist.rank)

    def _choose_final_weights(self) -> str:
        """Load the best checkpoint's weights when asked to and they differ from the current."""
        best_step = self.loop.best_step
        best_dir = self.checkpoints.best()
        usable = best_dir is not None and self.checkpoints.best_step() == best_step
        if self.config.checkpoint.final != "best" or not usable or best_dir is None:
            return "last"
        if best_step != self.loop.step:
            if self.peft is not None:
                load_adapter_weights(self.peft, best_dir / "adapter")
            else:
                load_full_weights(self.core, best_dir)
        return f"best (step {best_step})"

    def _parameter_counts(self) -> dict[str, int]:
        seen: set[int] = set()
        total = trainable = 0
        for p in self.core.parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            total += p.numel()
            trainable += p.numel() if p.requires_grad else 0
        return {"total": total, "trainable": trainable}

    def _export(self, record: dict[str, Any]) -> tuple[Path | None, Path | None]:
        """Write out_dir/model (a full lmscope checkpoint) and, for LoRA, out_dir/adapter."""
        from lmscope.zoo.checkpoint import save_checkpoint

        for stale in [*self.out_dir.glob(".model.*"), *self.out_dir.glob(".adapter.*")]:
            shutil.rmtree(stale, ignore_errors=True)  # left by an export that was killed
        metadata = {"producer": "lmscope train", "training": record}
        adapter_dir = None
        model: Transformer | None = self.core
        if self.peft is not None:
            adapter_dir = save_adapter(self.peft, self.out_dir / "adapter")
            model = merge_lora(self.peft) if self.config.finetune.merge_lora else None
        if model is None:
            return None, adapter_dir
        tmp = new_temp_dir(".model.", self.out_dir)
        try:
            save_checkpoint(model, tmp, tokenizer=self.hf_tokenizer, metadata=_json_safe(metadata))
            target = self.out_dir / "model"
            replace_dir(tmp, target)
        except OSError as err:
            shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointWriteError(
                f"could not write the final model to {self.out_dir / 'model'}: {err}; the step "
                "checkpoints are intact, free space and run again with --resume"
            ) from err
        return target, adapter_dir


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str, allow_nan=True))


def _dumps(value: Any) -> str:
    return json.dumps(value, indent=1, default=str) + "\n"


def train(config: TrainConfig, **kwargs: Any) -> TrainResult:
    """Convenience: `Trainer(config, **kwargs).run()`."""
    return Trainer(config, **kwargs).run()


__all__ = ["Callback", "TrainError", "TrainResult", "Trainer", "train"]
