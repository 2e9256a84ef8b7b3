"""The data pipeline: reading, cleaning, splitting, tokenizing, packing, manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lmscope.data.clean import CleanSettings, clean_records, clean_text
from lmscope.data.dataset import IGNORE_INDEX, TokenSplit
from lmscope.data.errors import DataError
from lmscope.data.instruct import encode_instruction
from lmscope.data.manifest import read_manifest
from lmscope.data.prepare import PrepareConfig, prepare
from lmscope.data.sources import read_records
from lmscope.data.split import split_records
from lmscope.data.tokenizer import SpecialTokens, TextTokenizer, train_bpe

SHAKESPEARE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "tinyshakespeare.txt"


def corpus_text(chars: int = 30_000) -> str:
    if SHAKESPEARE.is_file():
        return SHAKESPEARE.read_text()[:chars]
    words = [
        "the",
        "king",
        "and",
        "queen",
        "of",
        "the",
        "land",
        "spoke",
        "to",
        "their",
        "people",
        "at",
        "dawn",
    ]
    rng = np.random.default_rng(0)
    paras = [" ".join(rng.choice(words, 30)) for _ in range(chars // 200)]
    return "\n\n".join(paras)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(corpus_text())
    return path


@pytest.fixture(scope="module")
def prepared(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "data"
    prepare(PrepareConfig(inputs=[str(corpus)], out=str(out), vocab_size=400, progress=False))
    return out


# ---- reading ------------------------------------------------------------------------------------


def test_binary_corpus_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    path.write_bytes(b"hello\x00\x01\x02world" * 10)
    with pytest.raises(DataError, match="looks binary"):
        read_records([path])


def test_non_utf8_corpus_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        read_records([path])


def test_empty_corpus_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.txt"
    path.write_text("   \n\n  \n")
    with pytest.raises(DataError, match="no text left"):
        prepare(PrepareConfig(inputs=[str(path)], out=str(tmp_path / "out"), progress=False))
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_missing_file_and_bad_jsonl(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        read_records([tmp_path / "nope.txt"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{not json}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2"):
        read_records([bad])


def test_doc_split_modes(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("one\ntwo\n\n\nthree\n")
    assert [r["text"] for r in read_records([path], doc_split="paragraph")[0]] == [
        "one\ntwo",
        "three\n",
    ]
    assert len(read_records([path], doc_split="line")[0]) == 5
    assert len(read_records([path], doc_split="file")[0]) == 1


# ---- cleaning -------------------------------------------------------------------------------------


def test_clean_text_normalises_and_strips_controls() -> None:
    settings = CleanSettings(normalize="NFC")
    decomposed = "cafe\u0301\x07 ok\r\nnext\ttab\x00"
    assert clean_text(decomposed, settings) == "caf\u00e9 ok\nnext\ttab"
    out, _ = clean_records([{"text": "  padded  "}, {"prompt": "Q:", "completion": " A"}], settings)
    assert out[0]["text"] == "padded" and out[1]["completion"] == " A"
    assert clean_text("\ufb01", CleanSettings(normalize="NFKC")) == "fi"
    kept = clean_text("a\x07b", CleanSettings(strip_control=False))
    assert kept == "a\x07b"


def test_dedup_and_length_filters() -> None:
    records = [
        {"text": "alpha line\nshared line"},
        {"text": "beta line\nshared line"},
        {"text": "alpha line\nshared line"},
        {"text": "x"},
        {"text": "y" * 100},
    ]
    out, stats = clean_records(records, CleanSettings(dedup="documents", min_chars=2, max_chars=50))
    assert [r["text"] for r in out] == ["alpha line\nshared line", "beta line\nshared line"]
    assert (stats.duplicate_records_removed, stats.too_short_removed, stats.too_long_removed) == (
        1,
        1,
        1,
    )
    out, stats = clean_records(records[:2], CleanSettings(dedup="lines"))
    assert [r["text"] for r in out] == ["alpha line\nshared line", "beta line"]
    assert stats.duplicate_lines_removed == 1


def test_bad_clean_settings() -> None:
    with pytest.raises(DataError, match="normalize"):
        clean_records([{"text": "a"}], CleanSettings(normalize="NFX"))
    with pytest.raises(DataError, match="max_chars"):
        clean_records([{"text": "a"}], CleanSettings(min_chars=10, max_chars=5))


# ---- splitting -------------------------------------------------------------------------------------


def test_split_is_deterministic_and_leak_free() -> None:
    records = [{"text": f"document number {i % 40}"} for i in range(60)]  # 20 duplicates
    a = split_records(records, 0.2, 0.1, seed=3)
    b = split_records(list(reversed(records)), 0.2, 0.1, seed=3)
    texts = {name: {records[i]["text"] for i in idx} for name, idx in a.items()}
    texts_b = {name: {records[::-1][i]["text"] for i in idx} for name, idx in b.items()}
    assert texts == texts_b  # depends on content and seed, not order
    assert not texts["train"] & texts["val"] and not texts["train"] & texts["test"]
    assert not texts["val"] & texts["test"]
    assert sum(len(v) for v in a.values()) == 60
    assert split_records(records, 0.2, 0.1, seed=4) != a
    with pytest.raises(DataError, match="too few"):
        split_records(records[:2], 0.5, 0.4, seed=0)


# ---- tokenizer and instruction data -------------------------------------------------------------------


def test_bpe_tokenizer_round_trip_and_specials(tmp_path: Path) -> None:
    tok = train_bpe([corpus_text(5000)], vocab_size=300, specials=SpecialTokens())
    assert tok.vocab_size == 300
    assert {tok.bos_id, tok.eos_id, tok.pad_id} == {0, 1, 2}
    text = "Hello, wörld! <|eos|> stays text"
    ids = tok.encode(text)
    assert tok.eos_id not in ids  # corpus text cannot inject control tokens
    assert tok.decode(ids) == text
    tok.save(tmp_path)
    again = TextTokenizer.load(tmp_path)
    assert again.encode(text) == ids and again.eos_id == 1
    assert tok.to_hf()("abc")["input_ids"] == tok.encode("abc")
    with pytest.raises(DataError, match="too small"):
        train_bpe(["abc"], vocab_size=100)


def test_instruction_masks_cover_only_the_completion() -> None:
    specials = SpecialTokens(extra=["<|im_start|>", "<|im_end|>"])
    tok = train_bpe([corpus_text(5000)], vocab_size=320, specials=specials)
    record = {"prompt": "Say hi.", "completion": "Hi there"}
    ids, mask = encode_instruction(record, tok, "plain")
    learned = [i for i, m in zip(ids, mask, strict=True) if m]
    assert tok.decode(learned) == "Hi there<|eos|>"
    assert tok.decode([i for i, m in zip(ids, mask, strict=True) if not m]) == "Say hi."
    chat = {"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A!"}]}
    ids, mask = encode_instruction(chat, tok, "chatml")
    assert tok.decode([i for i, m in zip(ids, mask, strict=True) if m]) == "A!<|im_end|>"
    assert tok.decode(ids).startswith("<|im_start|>user\nQ?<|im_end|>")
    with pytest.raises(DataError, match="no assistant"):
        encode_instruction({"messages": [{"role": "user", "content": "x"}]}, tok, "plain")


def test_instruction_jsonl_prepare_writes_masks(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    lines = [
        json.dumps({"prompt": f"Continue line {i}:", "completion": f" answer {i}", "difficulty": i})
        for i in range(40)
    ]
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "data"
    manifest = prepare(
        PrepareConfig(
            inputs=[str(path)],
            out=str(out),
            vocab_size=300,
            score_key="difficulty",
            val_fraction=0.1,
            test_fraction=0.1,
            progress=False,
        )
    )
    assert manifest["kind"] == "instruction" and manifest["tokenizer"]["template"] == "plain"
    split = TokenSplit(out, "train")
    assert split.mask is not None and split.scores is not None
    rows = split.rows(context=64, pack=False)
    assert len(rows) == manifest["splits"]["train"]["documents"]
    _inputs, targets = split.batch(rows[:4], 64, pad_id=2)
    tok = TextTokenizer.load(out)
    first = targets[0][targets[0] != IGNORE_INDEX].tolist()
    assert tok.decode(first).startswith(" answer") and tok.decode(first).endswith("<|eos|>")
    assert split.target_count(rows[:4]) == int((targets != IGNORE_INDEX).sum())
    order = np.argsort(split.row_scores(rows, "score"))
    assert list(split.scores[order]) == sorted(split.scores)


# ---- end to end ------------------------------------------------------------------------------------


def test_prepare_writes_memmaps_and_manifest(prepared: Path, corpus: Path) -> None:
    manifest = read_manifest(prepared)
    assert manifest["sources"][0]["path"] == str(corpus)
    assert manifest["tokenizer"]["vocab_size"] == 400
    total_docs = sum(s["documents"] for s in manifest["splits"].values())
    assert total_docs == manifest["cleaning"]["records_out"]
    tok = TextTokenizer.load(prepared)
    for name in ("train", "val", "test"):
        split = TokenSplit(prepared, name)
        assert isinstance(split.tokens, np.memmap) and split.tokens.dtype == np.uint16
        assert len(split) == manifest["splits"][name]["tokens"] > 0
        start, length = split.docs[0]
        doc = split.tokens[start : start + length]
        assert doc[-1] == tok.eos_id and tok.eos_id not in doc[:-1]
    # documents of different splits never coincide
    texts = {}
    for name in ("train", "val", "test"):
        split = TokenSplit(prepared, name)
        texts[name] = {tuple(split.tokens[s : s + n]) for s, n in split.docs}
    assert not texts["train"] & texts["val"] and not texts["train"] & texts["test"]


def test_prepare_is_reproducible(prepared: Path, corpus: Path, tmp_path: Path) -> None:
    again = prepare(
        PrepareConfig(inputs=[str(corpus)], out=str(tmp_path / "b"), vocab_size=400, progress=False)
    )
    first = read_manifest(prepared)
    assert again["tokenizer"]["sha256"] == first["tokenizer"]["sha256"]
    assert again["splits"] == first["splits"]  # same counts and file hashes
    with pytest.raises(DataError, match="--overwrite"):
        prepare(PrepareConfig(inputs=[str(corpus)], out=str(tmp_path / "b"), progress=False))


def test_packed_rows_cover_every_target_once(prepared: Path) -> None:
    split = TokenSplit(prepared, "val")
    rows = split.rows(context=16, pack=True)
    assert rows[:, 1].max() == 17 and int((rows[:, 1] - 1).sum()) == len(split) - 1
    doc_rows = split.rows(context=16, pack=False)
    starts, lengths = split.docs[:, 0], split.docs[:, 1]
    for s, n in doc_rows[:50]:
        doc = np.searchsorted(starts, s, side="right") - 1
        assert s + n <= starts[doc] + lengths[doc]  # never crosses a document


def test_reuse_tokenizer_from_a_directory(prepared: Path, corpus: Path, tmp_path: Path) -> None:
    manifest = prepare(
        PrepareConfig(
            inputs=[str(corpus)], out=str(tmp_path / "c"), tokenizer=str(prepared), progress=False
        )
    )
    assert manifest["tokenizer"]["source"] == str(prepared)
    assert manifest["tokenizer"]["sha256"] == read_manifest(prepared)["tokenizer"]["sha256"]


def test_cli_data_prepare_and_info(corpus: Path, tmp_path: Path) -> None:
    from lmscope.cli import _register, app

    _register()
    runner = CliRunner()
    out = tmp_path / "cli"
    args = ["data", "prepare", str(corpus), "--out", str(out), "--vocab-size", "300", "--quiet"]
    result = runner.invoke(app, [*args, "--dedup", "lines", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert read_manifest(out)["settings"]["clean"]["dedup"] == "lines"
    result = runner.invoke(app, ["data", "info", str(out)])
    assert result.exit_code == 0 and "train" in result.output
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    result = runner.invoke(app, ["data", "prepare", str(empty), "--out", str(tmp_path / "e")])
    assert result.exit_code == 2 and "no text left" in result.output


@pytest.mark.parametrize("option", ["--vocab-size", "--min-frequency"])
def test_cli_refuses_bpe_options_with_a_given_tokenizer(
    option: str, corpus: Path, tmp_path: Path
) -> None:
    """`--tokenizer char --vocab-size 100` used to ignore the vocabulary size without a word."""
    from lmscope.cli import _register, app

    _register()
    out = tmp_path / "char"
    args = ["data", "prepare", str(corpus), "--out", str(out), "--tokenizer", "char", "--quiet"]
    result = CliRunner().invoke(app, [*args, option, "100"])
    assert result.exit_code == 2
    assert f"error: {option} applies only to a newly trained BPE" in result.output
    assert not out.exists()


def test_the_docs_data_directory_is_ignored_by_git() -> None:
    """The docs prepare data into data/shakespeare inside the checkout; its token files must not
    show up as untracked files to be committed by accident."""
    import shutil
    import subprocess

    root = Path(__file__).resolve().parents[1]
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    for path in ("data/shakespeare/train.tokens.npy", "data/shakespeare/manifest.json"):
        check = subprocess.run(["git", "check-ignore", "-q", path], cwd=root, check=False)
        assert check.returncode == 0, f"{path} is not ignored by .gitignore"
