"""WordPiece tokenizer and sentence sampling input: against transformers' BertTokenizer, and on real reports."""

import numpy as np
import pytest

from cxr_jax.data import phantom, sources, text
from tests.conftest import data_spec, shared_dir

TRICKY = [
    "FINDINGS: Heart size is normal. IMPRESSION: No acute disease.",
    "Café au lait; naïve T-cell (CD4+) 2.5cm @ L-1/2 — résumé!",
    "肺 nodule\tseen\u00a0on x-ray… ¿qué? don't",
    "pneumothoraxpneumothoraxpneumothorax unknownword zzzz",
    "",
]


@pytest.fixture(scope="module")
def iu_texts():
    data = sources.load(data_spec("iu_reports", shared_dir("iu_reports"), "all"), image_size=32, seed=0)
    return list(data["text"])


@pytest.fixture(scope="module")
def iu_vocab(iu_texts):
    return text.train_vocab(iu_texts, vocab_size=2000)


def test_matches_transformers_bert_tokenizer(tmp_path, iu_texts, iu_vocab):
    transformers = pytest.importorskip("transformers")
    path = tmp_path / "vocab.txt"
    ours = text.Tokenizer(iu_vocab)
    ours.save(path)
    reference = transformers.BertTokenizer(str(path), do_lower_case=True)
    for sample in TRICKY + iu_texts[:300]:
        assert ours.tokenize(sample) == reference.tokenize(sample), sample
        want = reference(sample, max_length=32, truncation=True, padding="max_length")["input_ids"]
        np.testing.assert_array_equal(ours.encode(sample, 32), want)


def test_loads_vocab_file_and_reports_bad_ones(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join([*text.SPECIALS, "heart", "##s", "size"]) + "\n")
    tok = text.Tokenizer.from_file(path)
    np.testing.assert_array_equal(tok.encode("Hearts size ?", 8), [2, 5, 6, 7, 1, 3, 0, 0])
    with pytest.raises(sources.DataError, match="no such vocabulary file"):
        text.Tokenizer.from_file(tmp_path / "missing.txt")
    (tmp_path / "bad.txt").write_text("a\nb\n")
    with pytest.raises(sources.DataError, match=r"lacks the special tokens \['\[PAD\]'"):
        text.Tokenizer.from_file(tmp_path / "bad.txt")


def test_trained_vocab_covers_its_corpus_and_keeps_frequent_words_whole(iu_texts, iu_vocab):
    assert len(iu_vocab) == 2000 and len(set(iu_vocab)) == 2000
    assert tuple(iu_vocab[:5]) == text.SPECIALS
    tok = text.Tokenizer(iu_vocab)
    pieces = [p for t in iu_texts[:500] for p in tok.tokenize(t)]
    assert "[UNK]" not in pieces  # The alphabet is in the vocabulary, so every word is covered.
    for word in ("pneumothorax", "effusion", "cardiomediastinal", "normal"):
        assert tok.tokenize(word) == [word]
    assert text.train_vocab(iu_texts[:200], vocab_size=300) == text.train_vocab(iu_texts[:200], vocab_size=300)


def test_training_merges_by_pair_frequency():
    vocab = text.train_vocab(["ab ab ab ac"], vocab_size=len(text.SPECIALS) + 5, min_frequency=1)
    # Alphabet a, ##b, ##c; then the most frequent pair (a, ##b) ×3 before (a, ##c) ×1.
    assert vocab[len(text.SPECIALS):] == ["##b", "##c", "a", "ab", "ac"]
    assert text.train_vocab(["ab ab ab ac"], vocab_size=100, min_frequency=2)[-1] == "ab"  # ac occurs once.


def test_sentences_split_sections_and_sentences():
    report = "FINDINGS: Heart size is normal. Lungs are clear! IMPRESSION: No acute disease. "
    assert text.sentences(report) == ["Heart size is normal.", "Lungs are clear!", "No acute disease."]
    assert text.sentences("Measures 2.5 cm. Stable") == ["Measures 2.5 cm.", "Stable"]
    assert text.sentences("FINDINGS: . IMPRESSION:") == []


def test_encode_sentences_pads_and_counts():
    data = phantom.generate(6, image_size=32, seed=0)
    tok = text.Tokenizer(text.train_vocab(data["text"], vocab_size=200))
    ids, counts = text.encode_sentences(tok, list(data["text"]) + [""], max_length=16, max_sentences=4)
    assert ids.shape == (7, 4, 16) and ids.dtype == np.int32
    for i, report in enumerate(data["text"]):
        parts = text.sentences(report)
        assert counts[i] == min(len(parts), 4)
        np.testing.assert_array_equal(ids[i, 0], tok.encode(parts[0], 16))
        assert (ids[i, counts[i]:] == tok.pad_id).all()
    assert counts[-1] == 1 and list(ids[-1, 0, :3]) == [tok.cls_id, tok.sep_id, tok.pad_id]


def test_encode_whole_reports_joins_their_sentences():
    data = phantom.generate(3, image_size=32, seed=0)
    tok = text.Tokenizer(text.train_vocab(data["text"], vocab_size=200))
    ids, counts = text.encode_sentences(tok, list(data["text"]), max_length=64, max_sentences=4, whole=True)
    assert ids.shape == (3, 1, 64) and counts.tolist() == [1, 1, 1]
    for i, report in enumerate(data["text"]):
        body = " ".join(text.sentences(report))
        assert "FINDINGS" not in body and len(text.sentences(report)) > 1
        np.testing.assert_array_equal(ids[i, 0], tok.encode(body, 64))
