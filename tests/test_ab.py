"""Online A/B: sticky assignment, the experiment store (concurrency and SIGKILL durability),
and the statistics (chi-square survival, sample-ratio mismatch, Welch, always-valid mSPRT)."""

from __future__ import annotations

import itertools
import json
import math
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lmscope.evaluate.abtest import (
    ab_report,
    chi_square_sf,
    msprt_p_values,
    sample_ratio_mismatch,
    welch,
)
from lmscope.serve.feedback import (
    FeedbackStoreError,
    ResponseRecord,
    UnknownResponseError,
    open_store,
)
from lmscope.serve.routing import parse_route


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 6, 9])
def test_chi_square_survival_equals_scipy(df: int) -> None:
    stats = pytest.importorskip("scipy.stats")
    for x in (0.01, 0.5, 1.0, 3.84, 7.5, 20.0, 60.0):
        assert chi_square_sf(x, df) == pytest.approx(stats.chi2.sf(x, df), rel=1e-9, abs=1e-15)


def test_sample_ratio_mismatch_flags_a_broken_split_only() -> None:
    weights = {"v1": 0.5, "v2": 0.5}
    assert sample_ratio_mismatch({"v1": 600, "v2": 400}, weights)["mismatch"]
    fine = sample_ratio_mismatch({"v1": 505, "v2": 495}, weights)
    assert not fine["mismatch"] and fine["p_value"] > 0.5
    skewed = sample_ratio_mismatch({"v1": 800, "v2": 200}, {"v1": 0.8, "v2": 0.2})
    assert not skewed["mismatch"]


def test_welch_matches_scipy_for_large_samples() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.5, 0.2, 400), rng.normal(0.53, 0.25, 500)
    ours = welch(a, b)
    theirs = stats.ttest_ind(b, a, equal_var=False)
    assert ours["difference"] == pytest.approx(b.mean() - a.mean())
    assert ours["p_value"] == pytest.approx(theirs.pvalue, abs=2e-3)


def _peeking_false_positives(always_valid: bool, runs: int = 200, n: int = 300) -> float:
    """Share of A/A experiments declared significant at any peek (after every observation)."""
    rng = np.random.default_rng(7)
    hits = 0
    for _ in range(runs):
        arms = ["a" if x else "b" for x in rng.random(n) < 0.5]
        a = list(rng.random(arms.count("a")) < 0.6)
        b = list(rng.random(arms.count("b")) < 0.6)
        if always_valid:
            hits += min(msprt_p_values([float(x) for x in a], [float(x) for x in b], arms)) < 0.05
        else:
            ia = ib = 0
            for k, arm in enumerate(arms):
                ia, ib = ia + (arm == "a"), ib + (arm == "b")
                if k >= 20 and k % 10 == 0 and ia > 2 and ib > 2:
                    p = welch(np.array(a[:ia], float), np.array(b[:ib], float))["p_value"]
                    if p < 0.05:
                        hits += 1
                        break
    return hits / runs


def test_msprt_keeps_its_error_rate_under_continuous_peeking() -> None:
    always_valid = _peeking_false_positives(True)
    naive = _peeking_false_positives(False)
    assert always_valid <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / 200)
    assert naive > 2 * max(always_valid, 0.05)  # peeking at a fixed-horizon test is not safe


def test_msprt_detects_a_real_difference() -> None:
    rng = np.random.default_rng(3)
    arms = ["a" if x else "b" for x in rng.random(2000) < 0.5]
    a = [float(x) for x in rng.random(arms.count("a")) < 0.5]
    b = [float(x) for x in rng.random(arms.count("b")) < 0.65]
    p = msprt_p_values(a, b, arms)
    assert p[-1] < 0.01
    assert all(later <= earlier for earlier, later in itertools.pairwise(p))


def test_sticky_assignment_is_stable_and_follows_the_weights() -> None:
    route = parse_route("chat=v1:0.7,v2:0.3", {"v1", "v2"})
    users = [f"user-{i}" for i in range(4000)]
    first = [route.pick_sticky(u) for u in users]
    assert first == [route.pick_sticky(u) for u in users]
    counts = {m: first.count(m) for m in ("v1", "v2")}
    assert not sample_ratio_mismatch(counts, {"v1": 0.7, "v2": 0.3})["mismatch"]
    assert abs(counts["v1"] / len(users) - 0.7) < 0.03
    other = parse_route("other=v1:0.7,v2:0.3", {"v1", "v2"})
    agree = sum(a == other.pick_sticky(u) for a, u in zip(first, users, strict=True))
    assert agree < 0.7 * len(users)  # aliases are hashed independently (0.58 expected)


def _fill(store, n_per_arm: int, rates: dict[str, float], seed: int = 0) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    store.start_experiment("chat", {"v1": 0.5, "v2": 0.5})
    for i in range(2 * n_per_arm):
        model = "v1" if i % 2 == 0 else "v2"
        rid = f"r{i}"
        store.record_response(ResponseRecord(rid, "chat", model, f"u{i}", 0.1 + 0.01 * (i % 7)))
        up = bool(rng.random() < rates[model])
        store.add_feedback(f"f{i}", rid, "thumbs", float(up), float(up), None)


def test_report_from_the_store(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'ab.db'}")
    _fill(store, 150, {"v1": 0.4, "v2": 0.7})
    store.record_response(ResponseRecord("s1", None, "v3", shadow_of="r0", latency_s=0.2))
    report = ab_report(store.rows("responses"), store.rows("feedback"), store.rows("experiments"))
    assert report["alias"] == "chat"
    assert report["versions"]["v1"]["requests"] == 150
    assert report["versions"]["v2"]["feedback"] == 150
    comparison = report["comparison"]
    assert comparison["difference"] > 0.15 and comparison["significant"]
    assert not report["sample_ratio"]["mismatch"]
    assert report["shadow"] == {"v3": {"answers": 1, "errors": 0}}
    with pytest.raises(UnknownResponseError):
        store.add_feedback("x", "no-such-response", "thumbs", 1.0, 1.0, None)
    store.close()


def test_ab_report_cli(tmp_path: Path) -> None:
    from lmscope.cli import _register, app

    store = open_store(str(tmp_path / "ab.db"))
    _fill(store, 40, {"v1": 0.5, "v2": 0.5})
    store.close()
    _register()
    result = CliRunner().invoke(
        app, ["ab", "report", "--db", f"sqlite:///{tmp_path / 'ab.db'}", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert "always-valid p " in result.output
    assert json.loads((tmp_path / "ab.json").read_text())["versions"]["v1"]["requests"] == 40
    bad = CliRunner().invoke(app, ["ab", "report", "--db", "mysql://x/y"])
    assert bad.exit_code == 2 and "unsupported feedback store URL" in bad.output


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "c.db"))
    store.record_response(ResponseRecord("r", "chat", "v1"))
    errors: list[BaseException] = []

    def post(worker: int) -> None:
        try:
            for i in range(125):
                store.add_feedback(f"{worker}-{i}", "r", "rating", 5, 1.0, None)
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=post, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(store.rows("feedback")) == 1000


WRITER = textwrap.dedent(
    """
    import sys
    from lmscope.serve.feedback import ResponseRecord, open_store
    store = open_store(sys.argv[1])
    store.record_response(ResponseRecord("r", "chat", "v1"))
    i = 0
    while True:
        store.add_feedback(f"f{i}", "r", "thumbs", 1.0, 1.0, None)
        print(i, flush=True)  # acknowledged only after the call returned
        i += 1
    """
)


def test_sigkill_loses_no_acknowledged_feedback(tmp_path: Path) -> None:
    db = str(tmp_path / "k.db")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, db], stdout=subprocess.PIPE, text=True)
    acknowledged = -1
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while acknowledged < 200 and time.monotonic() < deadline:
        acknowledged = int(proc.stdout.readline())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert acknowledged >= 200
    stored = open_store(db).rows("feedback")
    assert len(stored) >= acknowledged + 1


def test_bad_store_urls() -> None:
    with pytest.raises(FeedbackStoreError, match="unsupported"):
        open_store("mysql://u:secret@h/db")
    with pytest.raises(FeedbackStoreError) as err:
        open_store("postgresql://u:secret@127.0.0.1:1/db")
    assert "secret" not in str(err.value)


def test_ab_report_reads_serves_default_store_and_creates_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ab report` with no --db reads where `serve --route` wrote; a mistyped path is one error
    line and leaves no empty database behind."""
    from lmscope.cli import _register, app

    monkeypatch.setenv("LMSCOPE_CACHE", str(tmp_path / "cache"))
    _register()
    missing = tmp_path / "typo.sqlite3"
    result = CliRunner().invoke(app, ["ab", "report", "--db", str(missing)])
    assert result.exit_code == 2 and "no feedback store at" in result.output
    assert not missing.exists()
    store = open_store(str(tmp_path / "cache" / "experiments.sqlite3"))
    _fill(store, 20, {"v1": 0.5, "v2": 0.5})
    store.close()
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["ab", "report", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "ab.json").read_text())["versions"]["v2"]["requests"] == 20
