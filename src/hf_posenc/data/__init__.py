"""Text corpora through ``datasets`` (the embedded standard library, local files, the Hub) and the BPE tokenizer."""
