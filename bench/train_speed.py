"""Training figures (prints numbers; not part of the test suite).

    python bench/train_speed.py speed        # lmscope's trainer vs a nanoGPT-style reference step
    python bench/train_speed.py shakespeare  # Tiny Shakespeare, BPE: validation loss after N minutes
    python bench/train_speed.py lora         # LoRA on smollm2-135m: step time, peak memory, val loss

`speed` measures training tokens/s on CPU in fp32 for a small config (6 layers, 6 heads, d_model
384, context 256) and a tiny one (4 layers, 4 heads, d_model 128, context 64). The reference is a
plain PyTorch GPT written like nanoGPT's model.py/train.py (same shapes, SDPA attention, tied
embeddings, AdamW, gradient clipping, random windows from a memory-mapped token file). lmscope is
measured through its real `Trainer` (data rows, loss masks, logging, schedule), steady state only.
Rounds alternate between the two (and which goes first) so that load from other processes
hits both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

CONFIGS = {
    "small": {"n_layers": 6, "n_heads": 6, "d_model": 384, "context": 256, "batch": 8},
    "tiny": {"n_layers": 4, "n_heads": 4, "d_model": 128, "context": 64, "batch": 32},
}


# ---- the nanoGPT-style reference -----------------------------------------------------------------


class RefAttention(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.c_attn = nn.Linear(d, 3 * d)
        self.c_proj = nn.Linear(d, d)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(c, dim=2)
        q = q.view(b, t, self.heads, c // self.heads).transpose(1, 2)
        k = k.view(b, t, self.heads, c // self.heads).transpose(1, 2)
        v = v.view(b, t, self.heads, c // self.heads).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(b, t, c))


class RefBlock(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(d)
        self.attn = RefAttention(d, heads)
        self.ln_2 = nn.LayerNorm(d)
        self.c_fc = nn.Linear(d, 4 * d)
        self.c_proj = nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.c_proj(F.gelu(self.c_fc(self.ln_2(x))))


class RefGPT(nn.Module):
    def __init__(self, vocab: int, context: int, d: int, layers: int, heads: int) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(context, d)
        self.h = nn.ModuleList(RefBlock(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.wte.weight = self.lm_head.weight
        for p in self.parameters():
            nn.init.normal_(p, std=0.02) if p.dim() > 1 else None

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1])
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def reference_tokens_per_s(
    data: np.ndarray, vocab: int, spec: dict[str, int], steps: int, warmup: int
) -> float:
    torch.manual_seed(0)
    ctx, batch = spec["context"], spec["batch"]
    model = RefGPT(vocab, ctx, spec["d_model"], spec["n_layers"], spec["n_heads"])
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-3,
        betas=(0.9, 0.95),
    )
    start = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            start = time.perf_counter()
        ix = torch.randint(len(data) - ctx - 1, (batch,))
        x = torch.stack([torch.from_numpy(data[i : i + ctx].astype(np.int64)) for i in ix.tolist()])
        y = torch.stack(
            [torch.from_numpy(data[i + 1 : i + 1 + ctx].astype(np.int64)) for i in ix.tolist()]
        )
        loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return steps * batch * ctx / (time.perf_counter() - start)


# ---- lmscope ----------------------------------------------------------------------------------------


def prepare_shakespeare(root: Path, vocab: int) -> Path:
    from lmscope.data.prepare import PrepareConfig, prepare

    out = root / f"shakespeare-{vocab}"
    if not (out / "manifest.json").exists():
        prepare(
            PrepareConfig(
                inputs=[str(SHARED / "tinyshakespeare.txt")],
                out=str(out),
                vocab_size=vocab,
                progress=False,
                overwrite=True,
            )
        )
    return out


def lmscope_tokens_per_s(
    data_dir: Path, spec: dict[str, int], steps: int, warmup: int, out: Path
) -> float:
    from lmscope.train.config import config_from_dict
    from lmscope.train.trainer import Callback, Trainer

    marks: dict[int, float] = {}

    class Clock(Callback):
        def on_step_end(self, trainer: Trainer, step: int, loss: float) -> None:
            marks[step] = time.perf_counter()

    config = config_from_dict(
        {
            "out_dir": str(out),
            "model": {
                "d_model": spec["d_model"],
                "n_layers": spec["n_layers"],
                "n_heads": spec["n_heads"],
                "dropout": 0.0,
            },
            "data": {"dir": str(data_dir), "context": spec["context"]},
            "train": {
                "max_steps": warmup + steps,
                "batch_size": spec["batch"],
                "dtype": "fp32",
                "device": "cpu",
            },
            "optim": {"lr": 1e-3, "weight_decay": 0.1, "grad_clip": 1.0},
            "eval": {"every": 0, "batches": 1, "test_at_end": False},
            "checkpoint": {"every": 0},
            "log": {"every": 10, "tensorboard": False, "progress": False, "mlflow": "off"},
        }
    )
    Trainer(config, resume=False, callbacks=[Clock()]).run()
    return steps * spec["batch"] * spec["context"] / (marks[warmup + steps] - marks[warmup])


def bench_speed(args: argparse.Namespace) -> None:
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, fp32"
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data_dir = prepare_shakespeare(root, args.vocab)
        tokens = np.load(data_dir / "train.tokens.npy", mmap_mode="r")
        for name, spec in CONFIGS.items():
            steps = args.steps if name == "small" else args.steps * 3
            ours, ref = [], []
            for r in range(args.rounds):  # alternate which goes first, against order effects
                for which in ("ref", "ours") if r % 2 == 0 else ("ours", "ref"):
                    if which == "ref":
                        ref.append(
                            reference_tokens_per_s(tokens, args.vocab, spec, steps, args.warmup)
                        )
                    else:
                        out = root / f"run-{name}-{r}"
                        ours.append(lmscope_tokens_per_s(data_dir, spec, steps, args.warmup, out))
            o, f = statistics.median(ours), statistics.median(ref)
            print(
                f"{name:5s} (L{spec['n_layers']} H{spec['n_heads']} D{spec['d_model']} T{spec['context']} "
                f"B{spec['batch']}): lmscope {o:8.0f} tok/s, reference {f:8.0f} tok/s, ratio {o / f:.2f}x "
                f"(rounds: lmscope {[round(x) for x in ours]}, reference {[round(x) for x in ref]})"
            )


# ---- Tiny Shakespeare for N minutes -----------------------------------------------------------------


def bench_shakespeare(args: argparse.Namespace) -> None:
    from lmscope.train.config import load_config
    from lmscope.train.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = prepare_shakespeare(Path(tmp), 4096)
        overrides = [
            f"out_dir={tmp}/run",
            f"data.dir={data_dir}",
            f"train.max_minutes={args.minutes}",
            "train.max_steps=100000",
            "log.progress=false",
            "log.tensorboard=false",
            "eval.patience=null",
            f"eval.every={args.eval_every}",
            f"checkpoint.every={args.eval_every}",
            "sample.prompts=[]",
            *args.overrides,
        ]
        config = load_config(ROOT / "examples" / args.config, overrides)
        result = Trainer(config, resume=False).run()
        record = result.record
        final = record["final"]
        print(
            f"{args.config} for {args.minutes} min ({torch.get_num_threads()} threads): "
            f"{final['step']} steps, {record['tokens_seen']:,} tokens, "
            f"val loss {final['val_loss']:.4f} (perplexity {final['val_perplexity']:.1f}), "
            f"best {final['best_val_loss']:.4f} at step {final['best_step']}, "
            f"test loss {final['test_loss']:.4f}, wall {record['wall_time_s']:.0f} s"
        )
        print(
            "eval history:",
            [(e["step"], round(e["val_loss"], 3)) for e in record["metrics"]["eval"]],
        )
        print_samples(Path(tmp) / "run" / "model")


def print_samples(model_dir: Path) -> None:
    """A few seeded samples from the trained model, so the figure comes with text."""
    from lmscope.engine import generate
    from lmscope.zoo.registry import load

    loaded = load(str(model_dir))
    for prompt in ("ROMEO:", "First Citizen:\nWe are", "KING HENRY:\nWhat"):
        result = generate(
            loaded.model, loaded.tokenizer, prompt, max_new_tokens=60, temperature=0.8, seed=0
        )
        print(f"--- sample ({prompt!r}, temperature 0.8, seed 0)\n{prompt}{result.text}")


# ---- LoRA on smollm2-135m ------------------------------------------------------------------------


def bench_lora(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT / "examples"))
    from make_instructions import make_pairs

    from lmscope.data.prepare import PrepareConfig, prepare
    from lmscope.train.config import config_from_dict
    from lmscope.train.trainer import Callback, Trainer

    marks: list[float] = []

    class Clock(Callback):
        def on_step_end(self, trainer: Trainer, step: int, loss: float) -> None:
            marks.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pairs = make_pairs((SHARED / "kjv.txt").read_text().splitlines(), args.pairs, seed=0)
        (root / "verses.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
        prepare(
            PrepareConfig(
                inputs=[str(root / "verses.jsonl")],
                out=str(root / "data"),
                tokenizer="smollm2-135m",
                val_fraction=0.1,
                test_fraction=0.05,
                progress=False,
            )
        )
        config = config_from_dict(
            {
                "out_dir": str(root / "run"),
                "init_from": "smollm2-135m",
                "data": {"dir": str(root / "data"), "context": 96, "pack": False},
                "train": {"max_steps": args.steps, "batch_size": args.batch},
                "optim": {"lr": 2e-3, "weight_decay": 0.0},
                "schedule": {"kind": "cosine", "warmup_steps": 5},
                "eval": {"every": args.steps, "batches": 4, "at_start": True, "test_at_end": False},
                "checkpoint": {"every": 0, "keep_last": 1},
                "log": {"every": 5, "tensorboard": False, "progress": False, "mlflow": "off"},
                "finetune": {
                    "lora": {
                        "r": 8,
                        "alpha": 16,
                        "dropout": 0.0,
                        "targets": ["attn.qkv", "attn.out", "mlp.fc_in", "mlp.fc_out"],
                    }
                },
            }
        )
        result = Trainer(config, resume=False, callbacks=[Clock()]).run()
        evals = result.record["metrics"]["eval"]
        step_times = np.diff(marks[2:])  # skip the first steps (allocation, warm-up)
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        params = result.record["parameters"]
        print(
            f"LoRA r=8 on smollm2-135m, {len(pairs)} verse-completion pairs, batch {args.batch}, "
            f"{args.steps} steps, {torch.get_num_threads()} threads: "
            f"step time median {np.median(step_times):.2f} s, peak RSS {peak_gb:.2f} GB, "
            f"trainable {params['trainable']:,} of {params['total']:,} parameters, "
            f"val loss {evals[0]['val_loss']:.4f} before -> {evals[-1]['val_loss']:.4f} after"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "what", choices=["speed", "shakespeare", "lora"], nargs="?", default="speed"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="timed steps (speed: small config)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--config", default="tinyshakespeare.yaml")
    parser.add_argument("--pairs", type=int, default=400)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("overrides", nargs="*", help="shakespeare: extra config overrides")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    {"speed": bench_speed, "shakespeare": bench_shakespeare, "lora": bench_lora}[args.what](args)


if __name__ == "__main__":
    main()
