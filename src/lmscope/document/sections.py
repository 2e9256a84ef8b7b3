"""The card's sections (Hugging Face model card template order), each built from the facts
alone: template sentences, tables, and, where facts are missing, what would supply them."""

from __future__ import annotations

from typing import Any

from lmscope.document.templates import explain, human, num

SECTIONS = (
    ("model_details", "Model Details"),
    ("uses", "Uses"),
    ("bias_risks_limitations", "Bias, Risks, and Limitations"),
    ("training_details", "Training Details"),
    ("evaluation", "Evaluation"),
    ("model_examination", "Model Examination"),
    ("environmental_impact", "Environmental Impact"),
    ("technical_specifications", "Technical Specifications"),
)
# The facts each section is written from (the writer sees only these).
SECTION_FACTS = {
    "model_details": ("model", "overview", "architecture"),
    "uses": ("model", "overview"),
    "bias_risks_limitations": ("overview", "training", "data"),
    "training_details": ("training", "data"),
    "evaluation": ("evaluation", "training"),
    "model_examination": ("interpretability",),
    "environmental_impact": ("training",),
    "technical_specifications": ("overview", "architecture", "layers"),
}
OVERFIT_GAP = 0.1  # val - train loss above this (nats) reads as overfitting
IMBALANCE_RATIO = 3.0  # largest / smallest class support above this reads as imbalance


def sentence(text: str) -> dict[str, Any]:
    return {"text": text, "origin": "template"}


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> dict[str, Any]:
    return {"title": title, "columns": columns, "rows": rows}


def _details(f: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    ov, arch, model = f["overview"], f["architecture"], f["model"]
    total = ov["parameters"].get("total")
    out = []
    kind = arch.get("kind", "model")
    head = f"{model['name']} is a {kind}"
    if ov.get("family"):
        head += f" of the {ov['family']} family"
    if total is not None:
        head += f" with {num(total)} parameters ({human(total)})"
    out.append(head + ".")
    if ov["parameters"].get("tied_embeddings_counted_once"):
        out.append("Tied embedding weights are counted once.")
    if "n_layers" in arch:
        out.append(
            f"It stacks {arch['n_layers']} transformer blocks of width {arch['d_model']} and "
            f"reads up to {num(ov['context_length'])} tokens from a vocabulary of "
            f"{num(ov['vocab_size'])}."
        )
        out += _component_notes(arch, ov)
    if not model.get("runnable", True):
        out.append(
            "It was documented from its files alone; lmscope cannot run it, so no "
            "interpretability highlights are given."
        )
    tables = []
    comps = ov["parameters"].get("by_component")
    if comps:
        rows = [[k, num(v)] for k, v in comps.items()] + [["total", num(total)]]
        tables.append(_table("Parameters by component", ["component", "parameters"], rows))
    return out, tables


def _component_notes(arch: dict[str, Any], ov: dict[str, Any]) -> list[str]:
    pos, norm, att, mlp = arch["positional"], arch["normalisation"], arch["attention"], arch["mlp"]
    notes = [
        explain(
            f"positional.{pos['kind']}",
            n_ctx=num(ov["context_length"]),
            theta=num(pos.get("theta")),
        )
    ]
    if pos.get("scaling"):
        scaling = ", ".join(f"{k} {v}" for k, v in pos["scaling"].items())
        notes.append(explain("rope.scaling", scaling=scaling))
    notes.append(explain(f"norm.{norm['kind']}", eps=num(norm["eps"])))
    notes.append(
        explain(
            f"attention.{att['kind']}",
            heads=att["heads"],
            kv_heads=att["kv_heads"],
            head_dim=att["head_dim"],
            group=att["group_size"],
        )
    )
    mlp_key = "mlp.gated" if mlp["gated"] else "mlp.plain"
    notes.append(
        explain(mlp_key, activation=mlp["activation"], width=num(mlp["width"]),
                ratio=num(mlp["width_ratio"]))
    )  # fmt: skip
    if arch.get("tied_embeddings"):
        notes.append(explain("tied_embeddings", saved=num(arch["tied_parameters_saved"])))
    else:
        notes.append(explain("untied_embeddings"))
    if arch.get("parallel_blocks"):
        notes.append(explain("parallel_blocks"))
    return notes


def _uses(f: dict[str, Any]) -> list[str]:
    task = f["overview"].get("task")
    if task == "text-generation":
        return [
            "The model continues text: it is meant for research on language models, "
            "experiments with lmscope's explainers, and as a base for fine-tuning.",
            "It is not meant for decisions about people or for any use where a wrong or "
            "made-up answer causes harm; its output is not checked for truth.",
        ]
    return [
        "The intended task is not recorded in the model's files; state it before "
        "publishing (the architecture alone does not say what the model is for).",
    ]


def _risks(f: dict[str, Any]) -> list[str]:
    out = [
        "A language model repeats the biases and errors of its training text and can state "
        "false things fluently; check its output before relying on it."
    ]
    ctx = f["overview"].get("context_length")
    if ctx:
        out.append(f"It cannot attend to more than {num(ctx)} tokens at once.")
    data = f.get("data")
    if data and data.get("splits", {}).get("train", {}).get("tokens") is not None:
        tokens = data["splits"]["train"]["tokens"]
        out.append(
            f"It was trained on a corpus of {num(tokens)} training tokens; knowledge outside "
            "that corpus is absent."
        )
    return out


def _training(f: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    tr, data = f.get("training"), f.get("data")
    out: list[str] = []
    tables = []
    if tr:
        hp, oc = tr["hyperparameters"], tr["outcome"]
        ft = tr["finetune"]
        if ft["strategy"] == "from scratch":
            out.append("The model was trained from scratch.")
        else:
            out.append(f"The model was fine-tuned from {ft['init_from']} ({ft['strategy']}).")
        if ft.get("lora"):
            lora = ft["lora"]
            targets = ", ".join(lora.get("targets") or [])
            out.append(
                explain("lora", r=lora.get("r"), alpha=num(lora.get("alpha")), targets=targets)
            )
        if ft.get("freeze_layers"):
            out.append(explain("frozen", layers=ft["freeze_layers"]))
        if "learning_rate" in hp:
            out.append(explain("learning_rate", value=num(hp["learning_rate"])))
        if "schedule" in hp:
            out.append(explain("schedule", value=hp["schedule"], warmup=hp.get("warmup_steps", 0)))
        if "effective_batch_rows" in hp and "context" in hp:
            out.append(
                explain("batch", rows=hp["effective_batch_rows"], context=hp["context"],
                        batch=hp["batch_size"], accum=hp["grad_accum"])
            )  # fmt: skip
        if "weight_decay" in hp:
            out.append(explain("weight_decay", value=num(hp["weight_decay"])))
        if hp.get("grad_clip") and oc.get("clip_count") is not None and oc.get("steps"):
            out.append(
                explain("grad_clip", value=num(hp["grad_clip"]), clips=oc["clip_count"],
                        steps=oc["steps"])
            )  # fmt: skip
        if "dropout" in hp:
            out.append(explain("dropout", value=num(hp["dropout"])))
        if oc.get("steps") is not None and oc.get("tokens_seen") is not None:
            out.append(
                f"Training ran for {num(oc['steps'])} steps and saw {num(oc['tokens_seen'])} "
                f"tokens (stopped: {oc.get('stopped')})."
            )
        rows = [[k, num(v) if not isinstance(v, list) else str(v)] for k, v in hp.items()]
        tables.append(_table("Hyperparameters", ["hyperparameter", "value"], rows))
    if data:
        tok = data["tokenizer"]
        out.append(
            f"The data came from {len(data['sources'])} source file(s) and was tokenised with "
            f"a {tok['source']} tokenizer of {num(tok['vocab_size'])} tokens."
        )
        out.append("Splits: " + data["leakage_guarantee"] + ".")
        rows = [[name, num(s.get("documents")), num(s.get("tokens"))]
                for name, s in data["splits"].items()]  # fmt: skip
        tables.append(_table("Data splits", ["split", "documents", "tokens"], rows))
        src = [[s.get("path"), num(s.get("bytes")), (s.get("sha256") or "")[:16]]
               for s in data["sources"]]  # fmt: skip
        tables.append(_table("Sources", ["path", "bytes", "sha256 (prefix)"], src))
        if data.get("cleaning"):
            rows = [[k, num(v)] for k, v in data["cleaning"].items()]
            tables.append(_table("Cleaning", ["step", "count"], rows))
    return out, tables


def _error_analysis(f: dict[str, Any]) -> list[str]:
    out = []
    tr = f.get("training")
    if tr:
        oc = tr["outcome"]
        train_loss, val_loss = oc.get("train_loss"), oc.get("val_loss")
        gap = oc.get("val_minus_train_loss")
        if train_loss is not None and val_loss is not None and gap is not None:
            if gap > OVERFIT_GAP:
                verdict = (
                    "the gap suggests overfitting; more data, dropout or earlier stopping help"
                )
            elif gap < -OVERFIT_GAP:
                verdict = (
                    "validation below training loss suggests underfitting or regularised training"
                )
            else:
                verdict = "the gap is small, so the model neither clearly over- nor underfits"
            out.append(
                f"Final training loss {num(train_loss)} and validation loss {num(val_loss)} "
                f"differ by {num(gap)}: {verdict}."
            )
    ev = f.get("evaluation") or {}
    for task in ev.get("tasks", []):
        per_class = task.get("per_class")
        if not per_class:
            continue
        supports = {k: v.get("support", 0) for k, v in per_class.items() if isinstance(v, dict)}
        if supports and min(supports.values()) > 0:
            big = max(supports, key=lambda k: supports[k])
            small = min(supports, key=lambda k: supports[k])
            ratio = supports[big] / supports[small]
            if ratio > IMBALANCE_RATIO:
                out.append(
                    f"In {task['name']} the classes are imbalanced: {big} has {supports[big]} "
                    f"items and {small} has {supports[small]}; class weights or oversampling "
                    f"of {small} would counter this."
                )
        worst = min(per_class.items(), key=lambda kv: kv[1].get("recall", 1.0))
        out.append(
            f"In {task['name']} the weakest class is {worst[0]} with recall "
            f"{num(float(worst[1].get('recall', 0.0)))}."
        )
    return out


def _evaluation(f: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    ev = f.get("evaluation") or {}
    out, rows = [], []
    for task in ev.get("tasks", []):
        for name, m in task["metrics"].items():
            ci = m.get("ci95") or [None, None]
            rows.append(
                [task["name"], name, num(m["value"]), f"{num(ci[0])}-{num(ci[1])}", num(m.get("n"))]
            )
    if rows:
        out.append(f"The model was evaluated on {len(ev['tasks'])} task(s); every metric has "
                   "its 95% confidence interval and item count.")  # fmt: skip
    tables = [_table("Results", ["task", "metric", "value", "95% CI", "n"], rows)] if rows else []
    return out + _error_analysis(f), tables


def _examination(f: dict[str, Any]) -> list[str]:
    it = f.get("interpretability")
    if not it:
        return []
    out = []
    top = it["top_heads"]
    if top:
        names = ", ".join(f"{h['head']} ({num(h['share'])})" for h in top[:3])
        out.append(f"On the built-in probe prompts the heads with the largest share of the "
                   f"attention output at the last position are {names}.")  # fmt: skip
    ind = it["induction"]
    if ind["heads"]:
        names = ", ".join(h["head"] for h in ind["heads"][:5])
        out.append(f"{len(ind['heads'])} head(s) behave as induction heads on a repeated "
                   f"random sequence (score at least {num(ind['threshold'])}): {names}.")  # fmt: skip
    else:
        s = ind["strongest"]
        out.append(f"No head reaches the induction threshold of {num(ind['threshold'])}; the "
                   f"strongest is {s['head']} with {num(s['score'])}.")  # fmt: skip
    for settle in it["logit_lens_settles"]:
        where = settle["node"] or "no layer"
        out.append(f'For "{settle["prompt"]}" the logit-lens prediction settles at {where}.')
    return out


def _environment(f: dict[str, Any]) -> list[str]:
    tr = f.get("training")
    if not tr:
        return []
    hw, oc = tr["hardware"], tr["outcome"]
    device = hw.get("gpu") or hw.get("device")
    out = []
    if oc.get("wall_time_s") is not None:
        out.append(f"Training took {num(round(oc['wall_time_s'], 1))} seconds on {device} "
                   f"({hw.get('world_size', 1)} process(es)).")  # fmt: skip
    out.append("Energy and carbon were not measured; multiply the device's power draw by the "
               "wall time above for an estimate.")  # fmt: skip
    return out


def _specs(f: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    layers = f["layers"]
    out = []
    if layers["rows"] and layers.get("macs_total") is not None:
        out.append(f"The layer table lists {layers['modules']} modules; a forward pass costs "
                   f"{num(layers['macs_total'])} multiply-adds {layers['macs_unit']} at "
                   f"{layers['positions']} positions.")  # fmt: skip
    elif layers["rows"]:
        out.append(f"The layer table lists {layers['modules']} modules.")
    arch_rows = [[k, num(v) if not isinstance(v, dict) else ", ".join(f"{a}={num(b)}" for a, b in v.items())]
                 for k, v in f["architecture"].items() if not isinstance(v, list)]  # fmt: skip
    tables = [_table("Architecture", ["choice", "value"], arch_rows)]
    return out, tables


_MISSING_FOR = {
    "training_details": ("training",),
    "evaluation": ("evaluation",),
    "model_examination": ("interpretability",),
    "environmental_impact": ("training",),
}


def build_sections(f: dict[str, Any]) -> list[dict[str, Any]]:
    """Every section with its template sentences, tables, and missing-fact notes."""
    built: dict[str, tuple[list[str], list[dict[str, Any]]]] = {
        "model_details": _details(f),
        "uses": (_uses(f), []),
        "bias_risks_limitations": (_risks(f), []),
        "training_details": _training(f),
        "evaluation": _evaluation(f),
        "model_examination": (_examination(f), []),
        "environmental_impact": (_environment(f), []),
        "technical_specifications": _specs(f),
    }
    sections = []
    for key, title in SECTIONS:
        texts, tables = built[key]
        missing = [f["missing"][part] for part in _MISSING_FOR.get(key, ()) if part in f["missing"]]
        if key == "training_details" and "data" in f["missing"] and f.get("training"):
            missing.append(f["missing"]["data"])
        sections.append(
            {
                "id": key,
                "title": title,
                "sentences": [sentence(t) for t in texts],
                "tables": tables,
                "missing": missing,
            }
        )
    return sections
