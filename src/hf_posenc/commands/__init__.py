"""Subcommands of the ``hf-posenc`` CLI, one module each (see ``hf_posenc.cli``)."""
