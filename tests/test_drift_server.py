"""Drift monitoring end to end: a real server on a tiny model with a KJV reference sees KJV
verses (no drift), then Tiny Shakespeare lines and random token soup (drift), in /v1/drift and
/metrics; bad references fail the start with one clear line."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from lmscope.serve.drift import DriftSettings
from lmscope.serve.drift_reference import DriftReferenceError, build_profile
from lmscope.serve.routing import ModelSpec
from lmscope.serve.state import ServeSettings
from serve_support import running_server

WINDOW = 40


def lines(path: Path, start: int, count: int, max_chars: int = 160) -> list[str]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines()[start:]:
        line = line.strip()
        if line and not line.endswith(":") and len(line) <= max_chars:
            out.append(line)
        if len(out) == count:
            break
    return out


def kjv_split(shared_data: Path, reference: int, held_out: int) -> tuple[list[str], list[str]]:
    """Verses drawn at random from the whole KJV: a reference and a disjoint held-out set from
    the same distribution (consecutive verses would compare one book with another)."""
    verses = lines(shared_data / "kjv.txt", 0, 40000)
    random.Random(0).shuffle(verses)
    return verses[:reference], verses[reference : reference + held_out]


def complete(base: str, prompts: list[str] | list[list[int]]) -> None:
    def one(prompt: str | list[int]) -> None:
        body = {"model": "tiny", "prompt": prompt, "max_tokens": 2, "temperature": 0}
        response = httpx.post(base + "/v1/completions", json=body, timeout=60)
        assert response.status_code == 200, response.text

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, prompts))


def signals(base: str) -> tuple[bool, dict[str, dict]]:  # type: ignore[type-arg]
    body = httpx.get(base + "/v1/drift", timeout=30).json()
    (model,) = body["models"]
    return body["drift"], {s["name"]: s for s in model["signals"]}


def test_shifted_prompts_are_flagged_and_in_distribution_ones_are_not(
    tiny_checkpoint: Path, shared_data: Path, tmp_path: Path
) -> None:
    verses, held_out = kjv_split(shared_data, 300, WINDOW + 10)
    reference = tmp_path / "kjv_reference.txt"
    reference.write_text("\n".join(verses) + "\n")
    drift = DriftSettings(str(reference), window=WINDOW, min_samples=20)
    settings = ServeSettings(models=[ModelSpec("tiny", str(tiny_checkpoint))], drift=drift)
    rng = random.Random(0)
    with running_server(settings) as base:
        off_the_shelf = httpx.get(base + "/metrics").text
        assert "lmscope:drift_window_requests" in off_the_shelf
        complete(base, held_out)
        flagged, calm = signals(base)
        assert not flagged, calm
        assert calm["prompt_tokens"]["n_current"] == WINDOW
        assert calm["prompt_logprob"]["psi"] is not None

        complete(base, lines(shared_data / "tinyshakespeare.txt", 0, WINDOW))
        flagged, shifted = signals(base)
        assert flagged and shifted["prompt_tokens"]["drift"], shifted
        assert shifted["prompt_tokens"]["mean_current"] < shifted["prompt_tokens"]["mean_reference"]
        metrics = httpx.get(base + "/metrics").text
        assert 'lmscope:drift_detected{model_name="tiny",signal="prompt_tokens"} 1.0' in metrics

        vocab = 300
        soup = [[rng.randrange(vocab) for _ in range(rng.randint(20, 60))] for _ in range(WINDOW)]
        complete(base, soup)
        flagged, soupy = signals(base)
        assert flagged and soupy["rare_token_share"]["drift"], soupy
        assert not soupy["finish_reason"]["drift"]  # every request still ends by length


def test_drift_route_says_how_to_turn_it_on(tiny_checkpoint: Path) -> None:
    settings = ServeSettings(models=[ModelSpec("tiny", str(tiny_checkpoint))])
    with running_server(settings) as base:
        response = httpx.get(base + "/v1/drift")
        assert response.status_code == 404
        error = response.json()["error"]
        assert error["code"] == "drift_monitoring_off" and "--drift-reference" in error["message"]
        assert "lmscope:drift_psi" not in httpx.get(base + "/metrics").text


def test_bad_references_are_one_clear_error(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from lmscope.zoo.registry import load

    loaded = load(str(tiny_checkpoint))
    model, tok = loaded.model, loaded.tokenizer
    with pytest.raises(DriftReferenceError, match="does not exist"):
        build_profile(str(tmp_path / "nope.txt"), model, tok)
    short = tmp_path / "short.txt"
    short.write_text("one line\n\nanother\n")
    with pytest.raises(DriftReferenceError, match="has 2 non-empty samples; give at least 20"):
        build_profile(str(short), model, tok)


def test_a_prepared_data_directory_is_a_reference_when_its_tokenizer_matches(
    tiny_checkpoint: Path, shared_data: Path, tmp_path: Path
) -> None:
    from lmscope.data.prepare import PrepareConfig, prepare
    from lmscope.zoo.registry import load

    text = tmp_path / "kjv.txt"
    text.write_text("\n".join(lines(shared_data / "kjv.txt", 0, 400)) + "\n")
    loaded = load(str(tiny_checkpoint))
    same, other = tmp_path / "same", tmp_path / "other"
    common = {"inputs": [str(text)], "doc_split": "line", "progress": False}
    prepare(PrepareConfig(out=str(same), tokenizer=str(tiny_checkpoint), **common))  # type: ignore[arg-type]
    prepare(PrepareConfig(out=str(other), vocab_size=400, **common))  # type: ignore[arg-type]
    profile = build_profile(str(same), loaded.model, loaded.tokenizer)
    from_text = build_profile(str(text), loaded.model, loaded.tokenizer)
    assert profile.samples >= 20
    # the same verses as text: documents drop their end token, text lines carry no BOS here
    assert sorted(profile.prompt_tokens)[len(profile.prompt_tokens) // 2] == pytest.approx(
        sorted(from_text.prompt_tokens)[len(from_text.prompt_tokens) // 2], rel=0.1
    )
    with pytest.raises(DriftReferenceError, match="prepared with another tokenizer"):
        build_profile(str(other), loaded.model, loaded.tokenizer)


def test_serve_refuses_a_missing_reference_in_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    lmscope = str(Path(sys.executable).parent / "lmscope")
    missing = str(tmp_path / "nope.txt")
    result = subprocess.run(
        [lmscope, "serve", "--drift-reference", missing, "--port", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: --drift-reference {missing} does not exist; give a text file (one sample per "
        "line) or a directory made by `lmscope data prepare`"
    )
