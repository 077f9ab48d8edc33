"""The tokenizer: a byte-level BPE trained with ``tokenizers`` on the training split, or an existing one.

Training is done once per (data, vocabulary size, recipe) and cached in a folder keyed by a hash of
those, so that the runs of ``hf-posenc compare`` (one per position encoding) share one tokenizer and
hence identical token streams. The result is a transformers fast tokenizer that ``save_pretrained``
writes beside the model and ``AutoTokenizer`` loads.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import SettingsError

EOS_TOKEN = "<|endoftext|>"  # also BOS, as in GPT-2: documents are joined by it when packing
PAD_TOKEN = "<|pad|>"  # distinct from EOS so that collators that mask padding keep the EOS labels
SPECIAL_TOKENS = (EOS_TOKEN, PAD_TOKEN)
# Bump when the training recipe changes (pre-tokenizer, special tokens...), to invalidate old caches.
TOKENIZER_RECIPE_VERSION = "bytelevel-bpe-1"
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)  # the byte alphabet plus the special tokens


def default_cache_dir() -> Path:
    """``$HF_POSENC_CACHE`` or ``~/.cache/hf_posenc``; tokenizers live under ``tokenizers/<hash>``."""
    return Path(os.environ.get("HF_POSENC_CACHE", Path.home() / ".cache" / "hf_posenc")).expanduser()


def tokenizer_cache_key(data: str | None, data_config: str | None, text_field: str, vocab_size: int, max_train_chars) -> str:
    from .corpus import data_fingerprint

    parts = (TOKENIZER_RECIPE_VERSION, data_fingerprint(data, data_config, text_field), vocab_size, max_train_chars)
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:16]


def _text_batches(dataset, max_chars: int | None, batch_size: int = 256):
    """Yield lists of texts from the dataset in order, stopping after ``max_chars`` characters."""
    seen = 0
    for start in range(0, len(dataset), batch_size):
        texts = dataset[start : start + batch_size]["text"]
        if max_chars is not None:
            kept = []
            for text in texts:
                if seen >= max_chars:
                    break
                kept.append(text[: max_chars - seen])
                seen += len(kept[-1])
            texts = kept
        if not texts:
            return
        yield texts


def train_bpe_tokenizer(dataset, vocab_size: int, max_train_chars: int | None = None, show_progress: bool = True):
    """Train a byte-level BPE on ``dataset["text"]`` and wrap it as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < MIN_VOCAB_SIZE:
        raise SettingsError(f"tokenizer.vocab_size must be >= {MIN_VOCAB_SIZE} (256 bytes + special tokens), got {vocab_size}")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte is representable: no unknown tokens
        show_progress=show_progress,
    )
    backend.train_from_iterator(_text_batches(dataset, max_train_chars), trainer=trainer, length=len(dataset))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=EOS_TOKEN, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN
    )


def load_tokenizer(path: str | os.PathLike):
    """An existing fast tokenizer (folder or Hub name) with an EOS token; a missing PAD becomes EOS."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except Exception as error:  # missing folder, not a tokenizer, no network
        raise SettingsError(f"could not load the tokenizer {str(path)!r}: {error}") from error
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise SettingsError(f"tokenizer {str(path)!r} is not a fast (tokenizers-backed) tokenizer")
    if tokenizer.eos_token_id is None:
        raise SettingsError(f"tokenizer {str(path)!r} has no eos_token; it is needed to join documents when packing")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_or_train_tokenizer(
    data: str | None = None,
    *,
    vocab_size: int = 4096,
    data_config: str | None = None,
    text_field: str = "text",
    path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    max_train_chars: int | None = None,
    show_progress: bool = True,
):
    """The tokenizer for a run: ``path`` if given, else a BPE trained on the data's train split (cached).

    The cache folder is ``cache_dir/tokenizers/<key>`` where the key hashes the data (file names, sizes
    and mtimes), ``vocab_size``, ``max_train_chars`` and the recipe version. A new tokenizer is written
    to a temporary folder and renamed into place, so concurrent or interrupted runs never see half a folder.
    """
    if path is not None:
        return load_tokenizer(path)
    from transformers import AutoTokenizer

    from .corpus import load_text_dataset

    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    final = root / "tokenizers" / tokenizer_cache_key(data, data_config, text_field, vocab_size, max_train_chars)
    if (final / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(str(final))
    train_split = load_text_dataset(data, "train", data_config=data_config, text_field=text_field)
    tokenizer = train_bpe_tokenizer(train_split, vocab_size, max_train_chars, show_progress=show_progress)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        tokenizer.save_pretrained(str(staging))
        try:
            os.rename(staging, final)
        except OSError:  # another process finished first: use its copy (identical by construction)
            if not (final / "tokenizer.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return AutoTokenizer.from_pretrained(str(final))


__all__ = ["load_or_train_tokenizer", "train_bpe_tokenizer", "load_tokenizer", "default_cache_dir", "EOS_TOKEN", "PAD_TOKEN"]
