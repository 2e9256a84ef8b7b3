"""Online A/B through a real server: sticky assignment by user, feedback stored durably,
shadow answers recorded but never returned, per-version metrics, the live report, and no
acknowledged feedback lost to concurrency or to SIGKILL."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from lmscope.serve.feedback import open_store
from lmscope.serve.routing import ModelSpec
from lmscope.serve.state import ServeSettings
from serve_support import free_port, running_server


def _settings(checkpoint: Path, db: Path, **extra) -> ServeSettings:  # type: ignore[no-untyped-def]
    return ServeSettings(
        models=[ModelSpec(m, str(checkpoint)) for m in ("v1", "v2", "v3")],
        routes=["chat=v1:0.5,v2:0.5"],
        feedback_db=f"sqlite:///{db}",
        max_seq_len=128,
        **extra,
    )


def _complete(client: httpx.Client, user: str | None, **body) -> dict:  # type: ignore[no-untyped-def,type-arg]
    payload = {"model": "chat", "prompt": "The quick", "max_tokens": 3, "temperature": 0, **body}
    if user is not None:
        payload["user"] = user
    response = client.post("/v1/completions", json=payload)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_ab_experiment_end_to_end(tiny_checkpoint: Path, tmp_path: Path) -> None:
    db = tmp_path / "ab.db"
    with running_server(_settings(tiny_checkpoint, db, shadows=["chat=v3"])) as base:
        client = httpx.Client(base_url=base, timeout=60)
        # sticky: a user always gets the same version; users spread over both
        seen: dict[str, set[str]] = {}
        answers = []
        for i in range(24):
            user = f"user-{i % 8}"
            answer = _complete(client, user)
            seen.setdefault(user, set()).add(answer["model"])
            answers.append(answer)
        assert all(len(models) == 1 for models in seen.values())
        assert {m for models in seen.values() for m in models} == {"v1", "v2"}
        # a header works as the user too, and chat is recorded like completions
        chat = client.post(
            "/v1/chat/completions",
            json={"model": "chat", "messages": [{"role": "user", "content": "hi"}],
                  "max_tokens": 2},
            headers={"x-lmscope-user": "user-3"},
        )  # fmt: skip
        assert chat.status_code == 200 and chat.json()["model"] in seen["user-3"]
        # feedback: each kind, then the errors
        first = answers[0]["id"]
        for body in ({"thumbs": "up"}, {"rating": 4}, {"score": 0.25}):
            ok = client.post("/v1/feedback", json={"response_id": first, **body})
            assert ok.status_code == 200, ok.text
        assert ok.json()["satisfaction"] == 0.25
        unknown = client.post("/v1/feedback", json={"response_id": "cmpl-nope", "thumbs": "up"})
        assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "response_id"
        bad = client.post("/v1/feedback", json={"response_id": first, "rating": 9})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "rating"
        two = client.post("/v1/feedback", json={"response_id": first, "rating": 2, "score": 1})
        assert two.status_code == 400
        # the shadow answered every request in the background, and its text was never returned
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            rows = open_store(str(db)).rows("responses")
            if sum(1 for r in rows if r["shadow_of"]) >= 25:
                break
            time.sleep(0.2)
        assert all(a["model"] in ("v1", "v2") for a in answers)
        report = client.get("/v1/experiments").json()["data"][0]
        assert report["alias"] == "chat"
        assert report["shadow"]["v3"]["answers"] >= 25
        assert sum(v["requests"] for v in report["versions"].values()) == 25
        assert report["versions"][answers[0]["model"]]["feedback"] == 3
        metrics = client.get("/metrics").text
        assert 'lmscope:ab_requests_total{alias="chat",model_name="v1",outcome="ok"}' in metrics
    rows = {r["id"]: r for r in open_store(str(db)).rows("responses")}
    assert rows[first]["latency_s"] is not None and rows[first]["completion_tokens"] == 3


def test_thousand_concurrent_feedback_posts_lose_none(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    db = tmp_path / "fb.db"
    with running_server(_settings(tiny_checkpoint, db)) as base:
        answer = _complete(httpx.Client(base_url=base, timeout=60), "u")

        async def post_all() -> int:
            limits = httpx.Limits(max_connections=64)
            async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:
                posts = [
                    client.post(
                        "/v1/feedback", json={"response_id": answer["id"], "rating": 1 + i % 5}
                    )
                    for i in range(1000)
                ]
                results = await asyncio.gather(*posts)
            return sum(r.status_code == 200 for r in results)

        acknowledged = asyncio.run(post_all())
    stored = open_store(str(db)).rows("feedback")
    assert acknowledged == 1000
    assert len(stored) == acknowledged


SERVER = """
import sys
from lmscope.cli import main
sys.argv = ["lmscope", "serve", "--model", "v1={ckpt}", "--model", "v2={ckpt}",
            "--route", "chat=v1:0.5,v2:0.5", "--feedback-db", "sqlite:///{db}",
            "--port", "{port}", "--max-seq-len", "128", "--no-prepack"]
main()
"""


def test_sigkill_mid_load_loses_no_acknowledged_feedback(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    db, port = tmp_path / "kill.db", free_port()
    code = SERVER.format(ckpt=tiny_checkpoint, db=db, port=port)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            pytest.fail("the server did not start")
        client = httpx.Client(base_url=base, timeout=30)
        answer = _complete(client, "u")
        acknowledged = 0

        async def hammer() -> None:
            nonlocal acknowledged
            async with httpx.AsyncClient(base_url=base, timeout=30) as aclient:

                async def one(i: int) -> None:
                    nonlocal acknowledged
                    try:
                        r = await aclient.post(
                            "/v1/feedback", json={"response_id": answer["id"], "thumbs": "up"}
                        )
                    except httpx.HTTPError:
                        return  # the server died under this request: not acknowledged
                    if r.status_code == 200:
                        acknowledged += 1

                async def killer() -> None:
                    while acknowledged < 150:
                        await asyncio.sleep(0.01)
                    proc.send_signal(signal.SIGKILL)

                await asyncio.gather(killer(), *(one(i) for i in range(600)))

        asyncio.run(hammer())
    finally:
        proc.kill()
        proc.wait()
    stored = len(open_store(str(db)).rows("feedback"))
    assert acknowledged >= 150
    assert stored >= acknowledged
