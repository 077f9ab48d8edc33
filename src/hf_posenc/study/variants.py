"""The language models of a ``compare`` study: every encoding as configured, and optionally the same encoding
trained again with randomized positions (Ruoss et al., 2023) as a labelled variant.

A variant shares its encoding's data, budget, seeds and tokenizer; only ``training.random_positions_max``
differs. It has its own folder (``<encoding>-randpos/``) and its own ``label`` in ``results.json``, so tables
and plots show it as a row / line of its own, while ``position_encoding`` stays the encoding's name.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..run_folder import RANDOM_POSITIONS_SUFFIX


def random_positions_label(encoding: str) -> str:
    """The ``label`` of ``encoding`` trained with randomized positions (``"rope + random positions"``)."""
    return f"{encoding} + random positions"


@dataclass(frozen=True)
class StudyModel:
    """One language model of a study: an encoding, trained with ordinary positions or randomized ones."""

    encoding: str
    random_positions_max: int | None = None  # M: training positions are sorted random subsets of [0, M)

    @property
    def randomized(self) -> bool:
        return self.random_positions_max is not None

    @property
    def label(self) -> str:
        return random_positions_label(self.encoding) if self.randomized else self.encoding

    @property
    def folder_name(self) -> str:
        """The model folder's name inside a seed's folder of the study."""
        return self.encoding + (RANDOM_POSITIONS_SUFFIX if self.randomized else "")


def study_models(encodings: list[str], randomized: list[str], random_positions_max: int | None) -> list[StudyModel]:
    """Every encoding in study order, each followed by its randomized variant when it is in ``randomized``."""
    models = []
    for encoding in encodings:
        models.append(StudyModel(encoding))
        if random_positions_max is not None and encoding in randomized:
            models.append(StudyModel(encoding, random_positions_max))
    return models


__all__ = ["StudyModel", "random_positions_label", "study_models"]
