"""The model: configuration, position encodings, modeling and the Llama converter.

The three ``*_hf_posenc.py`` files are flat siblings that import each other relatively and nothing else
from hf_posenc: ``save_pretrained`` copies them beside the weights for remote code.
"""
