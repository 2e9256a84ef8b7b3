"""Saving and restoring a trainer's state: step checkpoints (weights or LoRA adapter, optimizer,
every process's RNG, loop state), resuming from one, and picking the final weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lmscope.model.transformer import Transformer
from lmscope.train import distributed as dist
from lmscope.train import state as st
from lmscope.train.batches import RowStream, StreamPosition
from lmscope.train.checkpoints import CheckpointManager
from lmscope.train.config import TrainConfig
from lmscope.train.distributed import DistInfo
from lmscope.train.errors import CheckpointWriteError, ResumeError
from lmscope.train.finetune import load_adapter_weights
from lmscope.train.loop_state import Callback, LoopState
from lmscope.train.model_setup import check_architecture, load_full_weights
from lmscope.train.optim import ParamGroups


class StatePersistence:
    """The Trainer's checkpoint methods (a mixin: they read the trainer's attributes below)."""

    config: TrainConfig
    core: Transformer
    peft: Any
    hf_tokenizer: Any
    optimizer: torch.optim.Optimizer
    groups: ParamGroups
    loop: LoopState
    stream: RowStream
    checkpoints: CheckpointManager
    dist: DistInfo
    callbacks: list[Callback]

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
                callback.on_checkpoint(self, self.loop.step, path)  # type: ignore[arg-type]
        return path

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
