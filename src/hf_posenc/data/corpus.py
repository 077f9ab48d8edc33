"""Text data for training and evaluation, all through ``datasets``.

Three sources, one code path:

* ``None`` or ``"stdlib"``: the embedded default corpus, the ``.py`` source files of the running
  interpreter's standard library (about 12 MB of real Python on every machine, no download). Files are
  split into train and validation by a hash of their relative path, so the split is deterministic and
  a file never contributes to both splits.
* a path to a ``.txt`` / ``.jsonl`` / ``.json`` file or a folder of them: loaded with the ``text`` /
  ``json`` builders. Several files are split by file like the default corpus; a single file is split by
  document (every 20th document goes to validation).
* anything else: a Hugging Face Hub dataset name (with ``data_config``), for users with a network.

``tokenize_and_pack`` tokenizes with a batched, cached ``map`` and packs documents, joined by the EOS
token, into blocks of exactly ``block_size`` tokens.

``datasets`` is imported inside the functions: the model and training-loop import chain must not need it.
"""

from __future__ import annotations

import functools
import hashlib
import sysconfig
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import SettingsError

if TYPE_CHECKING:  # pragma: no cover
    import datasets

EMBEDDED_CORPUS_NAMES = ("stdlib",)
SPLITS = ("train", "validation")
TEXT_SUFFIXES = (".txt",)
JSON_SUFFIXES = (".jsonl", ".json")
# Share of files (by path hash) or documents that go to validation.
VALIDATION_PERCENT = 5
SINGLE_SOURCE_VALIDATION_EVERY = 20
# Folders of the standard library that are not ordinary library source: tests carry odd encodings and
# generated data, site-packages is whatever the user installed.
_SKIPPED_STDLIB_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
# Bump when the packing format changes, so cached maps from an older layout are not reused.
_PACKING_VERSION = "1"


def is_embedded_corpus(data: str | None) -> bool:
    return data is None or data in EMBEDDED_CORPUS_NAMES


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise SettingsError(f"split must be one of {list(SPLITS)}, got {split!r}")


def embedded_corpus_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _in_validation(key: str) -> bool:
    """Deterministic, platform-independent assignment of a file (by relative path) to validation."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 100 < VALIDATION_PERCENT


def _split_files_by_hash(files: list[Path], root: Path) -> dict[str, list[Path]]:
    keys = {path: path.relative_to(root).as_posix() for path in files}
    validation = [path for path in files if _in_validation(keys[path])]
    if not validation and len(files) >= 2:  # few files: still hold one out, the one with the smallest hash
        validation = [min(files, key=lambda p: hashlib.sha256(keys[p].encode()).digest())]
    if len(validation) == len(files) and len(files) >= 2:
        validation = validation[:-1]
    chosen = set(validation)
    return {"train": [p for p in files if p not in chosen], "validation": validation}


@functools.lru_cache(maxsize=None)
def _embedded_corpus_all_files() -> tuple[Path, ...]:
    root = embedded_corpus_root()
    files = []
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).parts
        if set(parts[:-1]) & _SKIPPED_STDLIB_DIRS or parts[0].startswith("config-"):
            continue
        if path.name.startswith("_sysconfigdata"):  # generated per machine, not library code
            continue
        files.append(path)
    return tuple(sorted(files))


def embedded_corpus_files(split: str) -> list[Path]:
    """The standard-library source files of one split of the embedded default corpus (sorted)."""
    _check_split(split)
    files = list(_embedded_corpus_all_files())
    if not files:
        raise SettingsError(f"the embedded corpus is empty: no .py files under {embedded_corpus_root()}")
    return _split_files_by_hash(files, embedded_corpus_root())[split]


def _local_files(path: Path) -> list[Path]:
    suffixes = TEXT_SUFFIXES + JSON_SUFFIXES
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in suffixes)
        if not files:
            raise SettingsError(f"data folder {str(path)!r} has no {'/'.join(suffixes)} files")
    else:
        if path.suffix not in suffixes:
            raise SettingsError(f"data file {str(path)!r} must end in one of {list(suffixes)}")
        files = [path]
    kinds = {p.suffix in TEXT_SUFFIXES for p in files}
    if len(kinds) > 1:
        raise SettingsError(f"data folder {str(path)!r} mixes text and JSON files; use a folder (or files) of one kind")
    return files


def _looks_like_path(data: str) -> bool:
    return data.startswith((".", "/", "~")) or Path(data).suffix in TEXT_SUFFIXES + JSON_SUFFIXES


def resolve_local_path(data: str | None) -> Path | None:
    """The local path ``data`` names, or ``None`` for the embedded corpus or a Hub name.

    Raises SettingsError when ``data`` looks like a path (``./x``, ``/x``, ``x.txt``...) but does not exist.
    """
    if is_embedded_corpus(data):
        return None
    path = Path(data).expanduser()
    if path.exists():
        return path
    if _looks_like_path(data):
        raise SettingsError(f"data file or folder not found: {data!r}")
    return None


def describe_data(data: str | None, data_config: str | None = None) -> str:
    """A one-line description of a data source, stored in train_summary.json and eval.json."""
    if is_embedded_corpus(data):
        return f"stdlib: Python {sysconfig.get_python_version()} standard library sources ({embedded_corpus_root()})"
    path = resolve_local_path(data)
    if path is not None:
        return f"local: {path.resolve()}"
    return f"hub: {data}" + (f" ({data_config})" if data_config else "")


def data_source_record(data: str | None, data_config: str | None = None) -> dict:
    """The structured form of ``describe_data`` that train_summary.json and eval.json store."""
    from ..run_folder import data_record

    description = describe_data(data, data_config)
    if is_embedded_corpus(data):
        return data_record("embedded", "stdlib", python_version=sysconfig.get_python_version(), description=description)
    path = resolve_local_path(data)
    if path is not None:
        return data_record("local", str(path.resolve()), description=description)
    return data_record("hub", data, data_config, description=description)


def data_fingerprint(data: str | None, data_config: str | None = None, text_field: str = "text") -> str:
    """A short hash that changes when the data changes (files: path, size, mtime); keys tokenizer caches."""
    hasher = hashlib.sha256()
    if is_embedded_corpus(data):
        files, root = list(_embedded_corpus_all_files()), embedded_corpus_root()
    else:
        path = resolve_local_path(data)
        files, root = (_local_files(path), path.parent) if path is not None else ([], None)
        hasher.update(f"{data}|{data_config}|{text_field}".encode())
    for file in files:
        stat = file.stat()
        hasher.update(f"{file.relative_to(root).as_posix()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return hasher.hexdigest()[:16]


def _drop_empty(dataset: datasets.Dataset, what: str, split: str) -> datasets.Dataset:
    if len(dataset):
        dataset = dataset.filter(
            lambda batch: [bool(text and text.strip()) for text in batch["text"]], batched=True, desc="Dropping empty documents"
        )
    if len(dataset) == 0:
        raise SettingsError(f"data {what}: the {split} split is empty (no non-blank text)")
    return dataset


def _every_nth_split(dataset: datasets.Dataset, split: str, what: str) -> datasets.Dataset:
    """Split one source by document: every SINGLE_SOURCE_VALIDATION_EVERY-th document is validation."""
    n = len(dataset)
    if n < 2:
        raise SettingsError(
            f"data {what} has {n} document(s); it needs at least 2 to split train/validation "
            "(text files: documents are paragraphs separated by blank lines; or pass several files)"
        )
    every = min(SINGLE_SOURCE_VALIDATION_EVERY, n)
    held_out = [i for i in range(n) if i % every == every - 1]
    held = set(held_out)
    indices = held_out if split == "validation" else [i for i in range(n) if i not in held]
    return dataset.select(indices)


def _select_text_column(dataset: datasets.Dataset, text_field: str, what: str) -> datasets.Dataset:
    if text_field not in dataset.column_names:
        raise SettingsError(f"data {what} has no field {text_field!r}; its fields are {dataset.column_names} (set data.text_field)")
    kind = dataset.features[text_field]
    if getattr(kind, "dtype", None) not in ("string", "large_string"):
        raise SettingsError(f"data {what}: field {text_field!r} holds {getattr(kind, 'dtype', None) or type(kind).__name__} "
                         "values, not text (every document's text must be a string)")
    extra = [c for c in dataset.column_names if c != text_field]
    dataset = dataset.remove_columns(extra)
    if text_field != "text":
        dataset = dataset.rename_column(text_field, "text")
    return dataset


def _load_files(builder: str, files_by_split: dict[str, list[Path]], what: str, **kwargs) -> dict:
    import datasets

    data_files = {name: [str(p) for p in files] for name, files in files_by_split.items() if files}
    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its JSON reader logs a traceback for a bad line
    try:
        return datasets.load_dataset(builder, data_files=data_files, **kwargs)
    except Exception as error:  # unreadable or malformed files are bad input, reported before training
        if "corresponds to no data" in str(error):
            raise SettingsError(f"data {what}: no documents found (the files are empty)") from error
        files = [Path(p) for paths in data_files.values() for p in paths]
        culprit = _find_bad_file(files, builder == "json")
        if culprit is not None:
            raise SettingsError(f"data {what}: {culprit}") from None
        raise SettingsError(f"could not read data {what}: {_root_cause(error)}") from None
    finally:
        datasets.logging.set_verbosity(verbosity)


def _root_cause(error: BaseException) -> str:
    """``datasets`` wraps the real problem ("An error occurred while generating the dataset"): name it."""
    chain = [error]
    while (chain[-1].__cause__ or chain[-1].__context__) is not None and len(chain) < 10:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    return "; ".join(f"{type(e).__name__}: {' '.join(str(e).split())[:200]}" for e in chain)


def _find_bad_file(files: list[Path], is_json: bool) -> str | None:
    """The first file that is not UTF-8 (or, for JSON lines, the first line that is not a JSON object)."""
    import json

    if all(not file.read_bytes().strip() for file in files):
        return "no documents found (the files are empty)"
    for file in files:
        raw = file.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            line = raw[: error.start].count(b"\n") + 1
            return f"file {str(file)!r} is not UTF-8 text (byte {error.start}, line {line}); convert it to UTF-8"
        if not is_json:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                return f"file {str(file)!r} line {number} is not valid JSON ({error.msg}); one JSON object per line"
            if not isinstance(row, dict):
                return f"file {str(file)!r} line {number} is a JSON {type(row).__name__}, not an object"
    return None


def _load_local(path: Path, split: str, text_field: str) -> datasets.Dataset:
    files = _local_files(path)
    what = repr(str(path))
    is_text = files[0].suffix in TEXT_SUFFIXES
    builder, kwargs = ("text", {"sample_by": "paragraph"}) if is_text else ("json", {})
    if len(files) >= 2:
        root = path if path.is_dir() else path.parent
        loaded = _load_files(builder, _split_files_by_hash(files, root), what, **kwargs)
        dataset = loaded[split]
        if not is_text:
            dataset = _select_text_column(dataset, text_field, what)
        return _drop_empty(dataset, what, split)
    dataset = _load_files(builder, {"train": files}, what, **kwargs)["train"]
    if not is_text:
        dataset = _select_text_column(dataset, text_field, what)
    dataset = _drop_empty(dataset, what, "whole")
    return _every_nth_split(dataset, split, what)


def _load_hub(name: str, split: str, data_config: str | None, text_field: str) -> datasets.Dataset:
    import datasets

    what = repr(name) + (f" ({data_config})" if data_config else "")
    try:
        loaded = datasets.load_dataset(name, data_config)
    except Exception as error:  # not found, no network, bad config: one clear message, before training
        raise SettingsError(f"could not load data {what} from the Hugging Face Hub: {error}") from error
    if not isinstance(loaded, datasets.DatasetDict):
        loaded = datasets.DatasetDict({"train": loaded})
    if "train" not in loaded:
        raise SettingsError(f"data {what} has splits {list(loaded)}, but no 'train' split")
    held_out = next((name for name in ("validation", "test") if name in loaded), None)
    if held_out is not None:
        chosen = loaded["train" if split == "train" else held_out]
        return _drop_empty(_select_text_column(chosen, text_field, what), what, split)
    # No held-out split: carve one out of train by document, as for a single local file.
    train = _drop_empty(_select_text_column(loaded["train"], text_field, what), what, "train")
    return _every_nth_split(train, split, what)


def load_text_dataset(
    data: str | None = None, split: str = "train", data_config: str | None = None, text_field: str = "text"
) -> datasets.Dataset:
    """A ``datasets.Dataset`` with one column ``"text"``: one split of the embedded corpus, local files or a Hub dataset."""
    _check_split(split)
    if is_embedded_corpus(data):
        files_by_split = {name: embedded_corpus_files(name) for name in SPLITS}
        dataset = _load_files("text", files_by_split, "stdlib", sample_by="document")[split]
        return _drop_empty(dataset, "stdlib", split)
    path = resolve_local_path(data)
    if path is not None:
        return _load_local(path, split, text_field)
    return _load_hub(data, split, data_config, text_field)


def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of a fast tokenizer's full definition (vocabulary, merges, normalizers, special tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"tokenize_and_pack needs a fast tokenizer, got {type(tokenizer).__name__}")
    return hashlib.sha256(f"{backend.to_str()}|{tokenizer.eos_token_id}".encode()).hexdigest()[:16]


def _derived_fingerprint(*parts) -> str:
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()[:16]


def document_token_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """Each document's token ids followed by EOS: the token stream (training and evaluation) is their concatenation."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise SettingsError("the tokenizer has no eos_token; it is needed to join documents", field="tokenizer")
    encoded = tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
    return [ids + [eos] for ids in encoded]


def tokenize_and_pack(dataset: datasets.Dataset, tokenizer, block_size: int) -> datasets.Dataset:
    """Tokenize ``dataset["text"]`` and pack it into rows of exactly ``block_size`` token ids.

    Documents are joined with the EOS token; the tail of each 1000-document batch that does not fill a
    block is dropped. Both maps are cached (fingerprints from the dataset, the tokenizer and block_size),
    so repeated runs with the same data and tokenizer reuse the token stream.
    """
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be an integer >= 1, got {block_size!r}")
    token_key = tokenizer_fingerprint(tokenizer)

    def tokenize(batch):
        return {"ids": document_token_ids(tokenizer, batch["text"])}

    def pack(batch):
        stream = [token for ids in batch["ids"] for token in ids]
        usable = len(stream) - len(stream) % block_size
        return {"input_ids": [stream[i : i + block_size] for i in range(0, usable, block_size)]}

    tokenized = dataset.map(
        tokenize,
        batched=True,
        remove_columns=dataset.column_names,
        new_fingerprint=_derived_fingerprint(dataset._fingerprint, token_key, "tokenize", _PACKING_VERSION),
        desc="Tokenizing",
    )
    return tokenized.map(
        pack,
        batched=True,
        remove_columns=["ids"],
        new_fingerprint=_derived_fingerprint(tokenized._fingerprint, block_size, "pack", _PACKING_VERSION),
        desc=f"Packing into blocks of {block_size}",
    )


__all__ = [
    "embedded_corpus_files",
    "embedded_corpus_root",
    "load_text_dataset",
    "tokenize_and_pack",
    "document_token_ids",
    "describe_data",
    "data_fingerprint",
    "is_embedded_corpus",
    "resolve_local_path",
    "tokenizer_fingerprint",
]
