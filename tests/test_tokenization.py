"""Byte-level BPE training, the per-data cache, and loading an existing tokenizer."""

import pytest
from transformers import AutoTokenizer

import hf_posenc.data.tokenizer as tokenization
from hf_posenc.data.corpus import embedded_corpus_root
from hf_posenc.errors import UsageError
from hf_posenc.data.tokenizer import EOS_TOKEN, PAD_TOKEN, load_or_train_tokenizer

SOURCE_MODULES = ("textwrap.py", "shlex.py", "fnmatch.py", "glob.py", "bisect.py", "heapq.py")


@pytest.fixture(scope="module")
def text_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    for name in SOURCE_MODULES:
        (folder / f"{name}.txt").write_text((embedded_corpus_root() / name).read_text())
    return folder


def test_trained_tokenizer_is_a_byte_level_fast_tokenizer(text_folder, tmp_path):
    tokenizer = load_or_train_tokenizer(str(text_folder), vocab_size=400, cache_dir=tmp_path, show_progress=False)
    assert len(tokenizer) == 400
    assert tokenizer.eos_token == tokenizer.bos_token == EOS_TOKEN and tokenizer.pad_token == PAD_TOKEN
    assert tokenizer.eos_token_id != tokenizer.pad_token_id
    text = "def f(x):\n    return x * 2  # ünïcödé ✓ never seen in training \U0001f600\n"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text  # byte-level: every string round-trips, no unknown tokens
    assert len(ids) < len(text.encode())  # merges were learned
    saved = tmp_path / "saved"
    tokenizer.save_pretrained(saved)
    reloaded = AutoTokenizer.from_pretrained(saved)
    assert reloaded(text, add_special_tokens=False)["input_ids"] == ids and reloaded.pad_token == PAD_TOKEN


def test_tokenizer_is_cached_per_data_and_vocab_size(text_folder, tmp_path, monkeypatch):
    first = load_or_train_tokenizer(str(text_folder), vocab_size=350, cache_dir=tmp_path, show_progress=False)
    cached = list((tmp_path / "tokenizers").iterdir())
    assert len(cached) == 1 and (cached[0] / "tokenizer.json").is_file()

    def no_training(*args, **kwargs):
        raise AssertionError("the cached tokenizer should have been reused")

    monkeypatch.setattr(tokenization, "train_bpe_tokenizer", no_training)
    again = load_or_train_tokenizer(str(text_folder), vocab_size=350, cache_dir=tmp_path, show_progress=False)
    assert again.get_vocab() == first.get_vocab()
    monkeypatch.undo()
    load_or_train_tokenizer(str(text_folder), vocab_size=360, cache_dir=tmp_path, show_progress=False)
    assert len(list((tmp_path / "tokenizers").iterdir())) == 2  # a new key for a new vocabulary size
    assert not [p for p in (tmp_path / "tokenizers").iterdir() if p.name.startswith(".")]  # no staging leftovers


def test_training_is_deterministic(text_folder, tmp_path):
    a = load_or_train_tokenizer(str(text_folder), vocab_size=330, cache_dir=tmp_path / "a", show_progress=False)
    b = load_or_train_tokenizer(str(text_folder), vocab_size=330, cache_dir=tmp_path / "b", show_progress=False)
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()


def test_max_train_chars_limits_the_training_text(text_folder, tmp_path):
    small = load_or_train_tokenizer(
        str(text_folder), vocab_size=2000, cache_dir=tmp_path, max_train_chars=2000, show_progress=False
    )
    assert len(small) < 2000  # too little text to learn 2000 tokens' worth of merges


def test_existing_tokenizer_by_path(text_folder, tmp_path):
    trained = load_or_train_tokenizer(str(text_folder), vocab_size=300, cache_dir=tmp_path, show_progress=False)
    trained.pad_token = None
    folder = tmp_path / "existing"
    trained.save_pretrained(folder)
    loaded = load_or_train_tokenizer(path=str(folder))
    assert loaded.get_vocab() == trained.get_vocab() and loaded.pad_token == loaded.eos_token  # PAD falls back to EOS
    with pytest.raises(UsageError, match="could not load the tokenizer"):
        load_or_train_tokenizer(path=str(tmp_path / "missing"))


def test_too_small_vocabulary_is_refused(text_folder, tmp_path):
    with pytest.raises(UsageError, match="vocab_size must be >= 258"):
        load_or_train_tokenizer(str(text_folder), vocab_size=100, cache_dir=tmp_path, show_progress=False)
