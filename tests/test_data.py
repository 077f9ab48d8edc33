"""Data API: embedded stdlib corpus, local text/jsonl files, the Hub path (offline, faked), packing."""

import json

import pytest

from hf_posenc.data.corpus import (
    describe_data,
    embedded_corpus_files,
    embedded_corpus_root,
    load_text_dataset,
    tokenize_and_pack,
)
from hf_posenc.errors import UsageError
from hf_posenc.data.tokenizer import train_bpe_tokenizer

SOURCE_MODULES = ("textwrap.py", "shlex.py", "fnmatch.py", "glob.py", "bisect.py", "heapq.py", "colorsys.py", "keyword.py")


@pytest.fixture(scope="module")
def text_folder(tmp_path_factory):
    """A folder of .txt files (real text: a few standard-library modules)."""
    folder = tmp_path_factory.mktemp("corpus")
    for name in SOURCE_MODULES:
        (folder / f"{name}.txt").write_text((embedded_corpus_root() / name).read_text())
    return folder


@pytest.fixture(scope="module")
def tokenizer(text_folder):
    return train_bpe_tokenizer(load_text_dataset(str(text_folder), "train"), vocab_size=300, show_progress=False)


def test_embedded_corpus_split_is_by_file_disjoint_and_deterministic():
    train, validation = embedded_corpus_files("train"), embedded_corpus_files("validation")
    assert len(train) > 300 and 10 <= len(validation) < len(train) / 5
    assert not set(train) & set(validation)
    assert embedded_corpus_files("validation") == validation  # deterministic
    root = embedded_corpus_root()
    for path in train + validation:
        parts = path.relative_to(root).parts
        assert path.suffix == ".py" and "site-packages" not in parts and "test" not in parts[:-1]


def test_embedded_corpus_loads_as_one_text_column_per_file():
    validation = load_text_dataset(None, "validation")
    assert validation.column_names == ["text"]
    files = embedded_corpus_files("validation")
    assert len(validation) <= len(files) and len(validation) >= len(files) - 2  # empty files are dropped
    texts = set(validation["text"])
    assert any(text == path.read_text() for path in files[:3] for text in texts)
    assert load_text_dataset("stdlib", "validation")["text"] == validation["text"]
    assert describe_data(None).startswith("stdlib: Python")


def test_bad_split_is_refused():
    with pytest.raises(UsageError, match="split must be one of"):
        load_text_dataset(None, "test")


def test_text_folder_is_split_by_file(text_folder):
    train, validation = load_text_dataset(str(text_folder), "train"), load_text_dataset(str(text_folder), "validation")
    assert train.column_names == ["text"] and len(train) > 0 and len(validation) > 0
    assert not set(train["text"]) & set(validation["text"])


def test_single_text_file_is_split_by_paragraph(tmp_path):
    path = tmp_path / "one.txt"
    path.write_text("\n\n".join(f"paragraph number {i} has some words" for i in range(40)))
    train, validation = load_text_dataset(str(path), "train"), load_text_dataset(str(path), "validation")
    assert len(train) == 38 and len(validation) == 2  # every 20th paragraph is held out
    assert validation["text"][0].strip() == "paragraph number 19 has some words"


def test_jsonl_uses_the_text_field_and_names_missing_fields(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"body": f"document {i}", "id": i}) + "\n" for i in range(25)))
    train = load_text_dataset(str(path), "train", text_field="body")
    assert train.column_names == ["text"] and len(train) == 24 and train["text"][0] == "document 0"
    with pytest.raises(UsageError, match=r"no field 'text'.*\['body', 'id'\]"):
        load_text_dataset(str(path), "train")


def test_missing_and_empty_data_are_refused(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        load_text_dataset(str(tmp_path / "missing.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n   \n")
    with pytest.raises(UsageError, match="empty"):
        load_text_dataset(str(empty))
    folder = tmp_path / "no_text"
    folder.mkdir()
    (folder / "notes.md").write_text("not picked up")
    with pytest.raises(UsageError, match="no .txt"):
        load_text_dataset(str(folder))


def test_hub_dataset_without_validation_split_is_carved_from_train(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, config=None, **kwargs):
        calls.append((name, config))
        return datasets.DatasetDict({"train": datasets.Dataset.from_dict({"content": [f"row {i}" for i in range(40)]})})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    validation = load_text_dataset("someone/corpus", "validation", data_config="small", text_field="content")
    train = load_text_dataset("someone/corpus", "train", data_config="small", text_field="content")
    assert calls[0] == ("someone/corpus", "small")
    assert len(validation) == 2 and len(train) == 38 and not set(train["text"]) & set(validation["text"])


def test_hub_load_failure_becomes_usage_error(monkeypatch):
    import datasets

    def failing(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", failing)
    with pytest.raises(UsageError, match="could not load data 'someone/corpus'.*no network"):
        load_text_dataset("someone/corpus")


def test_pack_gives_exact_blocks_of_the_eos_joined_stream(text_folder, tokenizer):
    texts = load_text_dataset(str(text_folder), "validation")
    packed = tokenize_and_pack(texts, tokenizer, block_size=64)
    assert packed.column_names == ["input_ids"] and len(packed) > 5
    assert all(len(row) == 64 for row in packed["input_ids"])
    stream = []
    for text in texts["text"]:
        stream += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    flat = [token for row in packed["input_ids"] for token in row]
    assert flat == stream[: len(flat)] and len(stream) - len(flat) < 64


def test_pack_is_cached_and_keyed_by_block_size(text_folder, tokenizer):
    texts = load_text_dataset(str(text_folder), "train")
    first = tokenize_and_pack(texts, tokenizer, block_size=32)
    again = tokenize_and_pack(texts, tokenizer, block_size=32)
    other = tokenize_and_pack(texts, tokenizer, block_size=48)
    assert first._fingerprint == again._fingerprint != other._fingerprint
    assert first.cache_files and first.cache_files == again.cache_files  # served from the datasets cache
    with pytest.raises(ValueError, match="block_size"):
        tokenize_and_pack(texts, tokenizer, block_size=0)
