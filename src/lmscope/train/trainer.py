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
import math
import os
import random
import sys
import time
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
from lmscope.files import atomic_write_text
from lmscope.model.modes import eval_mode
from lmscope.model.transformer import Transformer
from lmscope.train import distributed as dist
from lmscope.train.batches import RowStream, micro_slices
from lmscope.train.checkpoints import CheckpointManager
from lmscope.train.config import TrainConfig
from lmscope.train.errors import TrainError
from lmscope.train.export import dumps, export
from lmscope.train.finetune import (
    FreezePlan,
    apply_lora,
)
from lmscope.train.loggers import MetricLoggers
from lmscope.train.loop_state import (
    Callback,
    LoopState,
    TrainResult,
    choose_device,
    choose_precision,
)
from lmscope.train.model_setup import build_model
from lmscope.train.optim import make_optimizer, split_params
from lmscope.train.persist import StatePersistence
from lmscope.train.record import training_record
from lmscope.train.sampling import PromptFormat, sample
from lmscope.train.schedules import Schedule
from lmscope.train.session import StopRequest, banner, count_parameters, projected_total

RECORD_FILE = "training_record.json"


class Trainer(StatePersistence):
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
        self.stop = StopRequest()

    # ---- set-up ------------------------------------------------------------------------------
    def _setup(self) -> None:
        c = self.config
        self.device = choose_device(c.train.device, int(os.environ.get("LOCAL_RANK", "0")))
        self.dist = dist.init_distributed(self.device.type)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        self.precision = choose_precision(c.train.dtype, self.device)
        self.manifest = read_manifest(c.data.dir)
        self.tokenizer = TextTokenizer.load(c.data.dir)
        self.prompt_format = PromptFormat.choose(c.sample.chat, self.manifest, self.tokenizer)
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
            ids, stop_ids = self.prompt_format.encode(prompt, self.tokenizer)
            text = sample(
                self.core,
                self.tokenizer,
                ids,
                stop_ids=stop_ids,
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

    # ---- the loop --------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        """Train to the end (or until stopped); Ctrl-C or SIGTERM finishes the current step,
        saves a checkpoint and returns a result with `interrupted` set."""
        try:
            with self.stop.installed():
                self._setup()
                return self._run()
        finally:
            if self.loggers is not None:
                self.loggers.close()
            dist.shutdown(self.dist)

    def _start(self) -> Path | None:
        """Resume or seed, set the model up for training, open the loggers, print the banner."""
        c = self.config
        resume_dir = self.checkpoints.resume_point(self.resume, self.resume_from, self.out_dir)
        if resume_dir is not None:
            self._restore(resume_dir)
        else:
            torch.manual_seed(c.train.seed + self.dist.rank)
        if self.plan.active:
            self.plan.apply(self.core, self.loop.step)
        self.core.train()
        self._wrap()
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.loggers = MetricLoggers(self.out_dir, c.log.tensorboard, c.log.mlflow, c.to_dict())
        lines = banner(
            source=self.model_source,
            model=self.core,
            parameters=count_parameters(self.core),
            data_dir=c.data.dir,
            manifest=self.manifest,
            device=self.device,
            precision=self.precision,
            world_size=self.dist.world_size,
        )
        for line in lines:
            self._say(line)
        if resume_dir is not None:
            self._say(f"resumed from {resume_dir} at step {self.loop.step}")
        return resume_dir

    def _run(self) -> TrainResult:
        c = self.config
        resume_dir = self._start()
        if c.eval.at_start and self.loop.step == 0 and resume_dir is None:
            self._eval_and_track(0)
        bar = tqdm(
            total=c.train.max_steps,
            initial=self.loop.step,
            desc="train",
            unit="step",
            disable=not (c.log.progress and self.dist.is_main),
            dynamic_ncols=True,
        )
        session_start = time.perf_counter()
        wall_before, first_step = self.loop.wall_time_s, self.loop.step
        limit_s = None if c.train.max_minutes is None else 60 * c.train.max_minutes
        stopped = self._stop_reason() or "max_steps"
        if stopped == "max_minutes":
            self._say(
                f"train.max_minutes ({c.train.max_minutes:g}) was used up by earlier sessions "
                f"({self.loop.wall_time_s / 60:.1f} min); raise it to train further"
            )
        last_eval = last_ckpt = -1 if resume_dir is None else self.loop.step
        while stopped == "max_steps" and self.loop.step < c.train.max_steps:
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
            early = False
            if c.eval.every and step % c.eval.every == 0:
                early = self._eval_and_track(step)
                last_eval = step
            self.loop.wall_time_s = wall_before + time.perf_counter() - session_start
            if c.checkpoint.every and step % c.checkpoint.every == 0:
                self.save_checkpoint()
                last_ckpt = step
            for callback in self.callbacks:
                callback.on_step_end(self, step, loss)
            reason = self._stop_reason()
            per_step = (time.perf_counter() - session_start) / (step - first_step)
            bar.total = projected_total(
                step, c.train.max_steps, self.loop.wall_time_s, limit_s, per_step
            )
            bar.update(1)
            bar.set_postfix(
                loss=f"{loss:.4f}",
                lr=f"{self.optimizer.param_groups[0]['lr']:.2e}",
                gnorm=f"{norm:.2f}",
                tok_s=f"{speed:.0f}",
                refresh=False,
            )
            if early:
                stopped = "early_stopping"
                self._say(
                    f"early stopping at step {step}: no improvement in {c.eval.patience} evaluations"
                )
            elif reason is not None:
                stopped = reason
        bar.close()
        step = self.loop.step
        if stopped == "interrupted":
            self.loop.wall_time_s = wall_before + time.perf_counter() - session_start
            path = self.checkpoints.latest() if last_ckpt == step or step == 0 else None
            if last_ckpt != step and step > 0:
                path = self.save_checkpoint()
            return self._interrupted(path)
        if last_eval != step:
            self._eval_and_track(step)
        self.loop.wall_time_s = wall_before + time.perf_counter() - session_start
        if last_ckpt != step:
            self.save_checkpoint()
        return self._finish(stopped)

    def _interrupted(self, checkpoint: Path | None) -> TrainResult:
        """The result of a run stopped by a signal: saved at a step boundary, nothing exported."""
        self._say(f"stopped at step {self.loop.step} by {self.stop.signal_name}")
        record = {
            "final": {"step": self.loop.step, "stopped": "interrupted", "checkpoint": checkpoint}
        }
        return TrainResult(
            self.out_dir, None, None, record, self.dist.rank, checkpoint, interrupted=True
        )

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

    def _stop_reason(self) -> str | None:
        """ "interrupted" (a signal), "max_minutes" (training time used up across sessions) or
        None; decided together, so every process stops at the same step."""
        limit = self.config.train.max_minutes
        over = limit is not None and self.loop.wall_time_s >= 60 * limit
        flags = torch.tensor([float(self.stop.requested), float(over)], device=self.device)
        flags = dist.all_reduce_sum(flags, self.dist)
        if flags[0] > 0:
            return "interrupted"
        return "max_minutes" if flags[1] > 0 else None

    # ---- the end -----------------------------------------------------------------------------------
    def _finish(self, stopped: str) -> TrainResult:
        c = self.config
        final_val = self.loop.history["eval"][-1]["val_loss"] if self.loop.history["eval"] else None
        chosen = self._choose_final_weights()
        test_loss = None
        if c.eval.test_at_end and self.test_split is not None:
            test_loss = self.evaluate(self.test_split, self.test_rows, None)
            self._say(
                f"test loss {test_loss:.4f} (perplexity {math.exp(min(test_loss, 700.0)):.2f})"
            )
        record = training_record(self, stopped, final_val, test_loss, chosen)
        model_dir = adapter_dir = None
        if self.dist.is_main:
            model_dir, adapter_dir = export(
                self.core,
                self.peft,
                self.hf_tokenizer,
                self.out_dir,
                merge=c.finetune.merge_lora,
                record=record,
            )
            atomic_write_text(self.out_dir / RECORD_FILE, dumps(record))
            self._say(
                f"done: {stopped} at step {self.loop.step}; model in {model_dir or adapter_dir}"
            )
        dist.barrier(self.dist)
        return TrainResult(
            self.out_dir, model_dir, adapter_dir, record, self.dist.rank, self.checkpoints.latest()
        )


def train(config: TrainConfig, **kwargs: Any) -> TrainResult:
    """Convenience: `Trainer(config, **kwargs).run()`."""
    return Trainer(config, **kwargs).run()


__all__ = ["Callback", "TrainError", "TrainResult", "Trainer", "train"]
