"""Tuning figures (prints numbers; not part of the test suite).

    python bench/tune_speed.py            # examples/search_tiny.yaml on Tiny Shakespeare (long)
    python bench/tune_speed.py --quick    # the same pipeline, shrunk to a smoke run (~1 min)

Three studies over the same space (examples/search_tiny.yaml: learning rate, warmup, weight
decay, dropout, width): the default config of examples/tiny.yaml as one run, 20 TPE trials with
ASHA pruning, and the full grid (the `grid:` values, 48 points) without pruning. Printed: each
study's best validation loss, tokens trained (the compute), TPE+ASHA's tokens as a share of the
grid's, both best-so-far curves against cumulative tokens, and the tuning layer's overhead per
trial (queue, sampler, storage: the time around each training run) as a share of the trial's time.
Every figure is from this run; the results JSON lands in --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
QUICK = {  # a smoke run: same pipeline, tiny numbers
    "overrides": {
        "train.max_steps": 24,
        "train.batch_size": 8,
        "eval.every": 6,
        "eval.batches": 2,
        "model.n_layers": 1,
        "checkpoint.every": 0,
        "sample.prompts": [],
        "log.tensorboard": False,
    },
    "tpe_trials": 8,
    "grid_trials": 12,
}


def prepare_data(out: Path, quick: bool) -> Path:
    from lmscope.data.prepare import PrepareConfig, prepare

    data = out / "data"
    if (data / "manifest.json").is_file():
        return data
    text = SHAKESPEARE.read_text()
    if quick:
        text = text[:60_000]
    corpus = out / "corpus.txt"
    corpus.write_text(text)
    vocab = 512 if quick else 4096
    prepare(PrepareConfig(inputs=[str(corpus)], out=str(data), vocab_size=vocab, progress=False))
    return data


def search_for(out: Path, data: Path, name: str, quick: bool, **change: Any) -> Path:
    raw = yaml.safe_load((ROOT / "examples" / "search_tiny.yaml").read_text())
    raw["base"] = str(ROOT / "examples" / "tiny.yaml")
    raw["overrides"] = {**raw.get("overrides", {}), "data.dir": str(data)}
    if quick:
        raw["overrides"].update(QUICK["overrides"])
        raw["pruner"] = {"name": "asha", "min_resource": 6, "reduction_factor": 3}
    raw["study"] = {"name": name, "dir": str(out / name)}
    raw.update(change)
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def curve(study_dir: Path) -> tuple[list[dict[str, Any]], list[float], list[float]]:
    """Best-so-far validation loss against cumulative tokens, in trial order; and each trial's
    overhead share."""
    from lmscope.tune.report import export, load_study
    from lmscope.tune.storage import default_url

    data = export(load_study(default_url(study_dir)))
    points, tokens, best = [], 0, float("inf")
    shares, seconds = [], []
    for row in sorted(data["trials"], key=lambda r: r["number"]):
        tokens += int(row["tokens"] or 0)
        if row["values"]:
            best = min(best, row["values"][0])
        points.append({"trial": row["number"], "tokens": tokens, "best": best})
        record = Path(row["out_dir"]) / "trial.json"
        if record.is_file():
            trial = json.loads(record.read_text())
            if trial.get("overhead_s") is not None and trial["train_s"] > 0:
                total = trial["overhead_s"] + trial["train_s"]
                shares.append(trial["overhead_s"] / total)
                seconds.append(trial["overhead_s"])
    return points, shares, seconds


def default_run(out: Path, data: Path, quick: bool) -> dict[str, Any]:
    """examples/tiny.yaml as it is (with the same evaluation and data as the studies)."""
    from lmscope.train.config import load_config
    from lmscope.train.trainer import Trainer

    done = out / "default" / "training_record.json"
    if done.is_file():  # an earlier run of this bench trained it already: the same numbers
        record = json.loads(done.read_text())
        return {"val_loss": record["final"]["best_val_loss"], "tokens": record["tokens_seen"]}
    overrides = [f"data.dir={data}", f"out_dir={out / 'default'}", "log.progress=false"]
    overrides += ["eval.every=50", "checkpoint.every=0", "sample.prompts=[]"]
    if quick:
        overrides += [f"{k}={json.dumps(v)}" for k, v in QUICK["overrides"].items()]
    config = load_config(ROOT / "examples" / "tiny.yaml", overrides)
    record = Trainer(config, resume=False).run().record
    return {"val_loss": record["final"]["best_val_loss"], "tokens": record["tokens_seen"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run with tiny numbers")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-tune"))
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1)))
    from lmscope.tune.run import run_search

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = prepare_data(out, args.quick)
    tpe_trials = QUICK["tpe_trials"] if args.quick else 20
    grid_budget: dict[str, Any] = {"trials": QUICK["grid_trials"]} if args.quick else {}
    tpe = search_for(out, data, "tpe", args.quick, budget={"trials": tpe_trials})
    grid = search_for(out, data, "grid", args.quick, sampler="grid", pruner="none",
                      budget=grid_budget)  # fmt: skip
    baseline = default_run(out, data, args.quick)
    for path in (tpe, grid):
        run_search(path)
    results: dict[str, Any] = {"default": baseline, "quick": args.quick}
    for name in ("tpe", "grid"):
        points, shares, seconds = curve(out / name)
        results[name] = {
            "trials": len(points),
            "best_val_loss": points[-1]["best"],
            "tokens": points[-1]["tokens"],
            "curve": points,
            "overhead_share_median": statistics.median(shares) if shares else None,
            "overhead_share_max": max(shares) if shares else None,
            "overhead_s_median": statistics.median(seconds) if seconds else None,
        }
    t, g = results["tpe"], results["grid"]
    results["tpe_tokens_share_of_grid"] = t["tokens"] / g["tokens"]
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"default config: val loss {baseline['val_loss']:.4f}, {baseline['tokens']:,} tokens")
    for name in ("tpe", "grid"):
        r = results[name]
        print(
            f"{name:>4}: {r['trials']} trials, best val loss {r['best_val_loss']:.4f}, "
            f"{r['tokens']:,} tokens; tuning overhead per trial: median "
            f"{100 * (r['overhead_share_median'] or 0):.2f}%, max "
            f"{100 * (r['overhead_share_max'] or 0):.2f}% of the trial's time "
            f"(median {r['overhead_s_median'] or 0:.3f} s)"
        )
    print(
        f"TPE+ASHA used {100 * results['tpe_tokens_share_of_grid']:.1f}% of the grid's tokens; "
        f"best {t['best_val_loss']:.4f} vs grid {g['best_val_loss']:.4f} vs default "
        f"{baseline['val_loss']:.4f}"
    )
    for name in ("tpe", "grid"):
        line = ", ".join(f"{p['tokens']}:{p['best']:.3f}" for p in results[name]["curve"])
        print(f"{name} best-so-far (cumulative tokens: val loss): {line}")
    print(f"results: {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
