"""Published findings that a ``compare`` study can test, with their sources, and the verdict of one run.

This module is the one place that holds the literature's numbers. Each claim turns into one measured
quantity (a ``Stat`` over seeds), a threshold and a side: it ``agrees`` when the quantity's mean ± std lies on
the claimed side of the threshold, ``disagrees`` when it lies on the other side, and is ``inconclusive``
otherwise (interval straddling the threshold, fewer than two seeds, or encodings missing from the study).
A disagreement is reported as such; nothing here is tuned to produce a pattern.

Claims about the encodings read the plain runs only: records of a model trained with randomized positions are
removed before they are measured, so adding that variant to a study never changes their verdicts. Only a claim
about randomized positions itself (``uses_variants``) sees them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .aggregate import INCONCLUSIVE, Stat, stat, verdict_against_threshold
from .variants import random_positions_label

PRESS_2022 = "Press et al. 2022, Train Short, Test Long (ALiBi), ICLR; WikiText-103, trained at L = 512 tokens"
KAZEMNEJAD_2023 = ("Kazemnejad et al. 2023, The Impact of Positional Encoding on Length Generalization in "
                   "Transformers, NeurIPS; decoder-only models trained on short instances of algorithmic tasks")
HAVIV_2022 = "Haviv et al. 2022, Transformer Language Models without Positional Encodings Still Learn Positional Information"
RUOSS_2023 = ("Ruoss et al. 2023, Randomized Positional Encodings Boost Length Generalization of Transformers, ACL; "
              "algorithmic reasoning tasks, tested on sequences longer than the trained ones")


# ---- measured quantities (per seed, then a Stat) ---------------------------------------------------------
def _perplexities(records, label: str) -> dict[int, dict[int, float]]:
    """{seed: {eval_length: perplexity}} of one perplexity label (status ok only)."""
    table: dict[int, dict[int, float]] = {}
    for r in records:
        if r["record_type"] == "perplexity" and r["label"] == label and r["status"] == "ok" and not r.get("sliding"):
            table.setdefault(r.get("seed", 0), {})[r["eval_length"]] = r["perplexity"]
    return table


def train_length(records) -> int | None:
    return next((r["train_length"] for r in records if r["record_type"] == "perplexity" and r.get("train_length")), None)


def longest_length(records, label: str) -> int | None:
    lengths = {n for by_length in _perplexities(records, label).values() for n in by_length}
    return max(lengths, default=None)


def perplexity_ratio(records, label: str, numerator_length: int | None, denominator_label: str | None = None,
                     denominator_length: int | None = None) -> Stat:
    """Per seed: ppl(label, numerator_length) / ppl(denominator_label or label, denominator_length)."""
    numerators = _perplexities(records, label)
    denominators = _perplexities(records, denominator_label or label)
    ratios = []
    for seed, by_length in numerators.items():
        top, bottom = by_length.get(numerator_length), denominators.get(seed, {}).get(denominator_length)
        if top is not None and bottom:
            ratios.append(top / bottom)
    return stat(ratios)


def out_of_distribution_accuracy(records, encoding: str, task: str) -> Stat:
    """Per seed: mean exact-match accuracy of ``task`` over the test lengths beyond the trained ones."""
    by_seed: dict[int, list[float]] = {}
    for r in records:
        if (r["record_type"] == "task" and r["position_encoding"] == encoding and r["task"] == task
                and r.get("in_distribution") is False):
            by_seed.setdefault(r.get("seed", 0), []).append(r["accuracy"])
    return stat(sum(v) / len(v) for v in by_seed.values())


def mean_reciprocal_rank(records, encodings: list[str]) -> dict[str, Stat]:
    """Kazemnejad et al.'s summary: per (task, out-of-distribution length), rank the encodings by accuracy
    (ties share the better rank) and average 1 / rank over those cells; one value per seed."""
    cells: dict[int, dict[tuple, dict[str, float]]] = {}
    for r in records:
        if r["record_type"] == "task" and r.get("in_distribution") is False and r["position_encoding"] in encodings:
            cells.setdefault(r.get("seed", 0), {}).setdefault((r["task"], r["length"]), {})[r["position_encoding"]] = r["accuracy"]
    per_encoding: dict[str, list[float]] = {e: [] for e in encodings}
    for by_cell in cells.values():
        sums = dict.fromkeys(encodings, 0.0)
        complete = [c for c in by_cell.values() if set(c) == set(encodings)]
        for accuracies in complete:
            for encoding, accuracy in accuracies.items():
                sums[encoding] += 1.0 / (1 + sum(other > accuracy for other in accuracies.values()))
        if complete:
            for encoding in encodings:
                per_encoding[encoding].append(sums[encoding] / len(complete))
    return {e: stat(v) for e, v in per_encoding.items()}


# ---- the claims --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Claim:
    id: str
    statement: str
    source: str
    published: str  # the published numbers, as the source reports them
    test: str  # how this study tests it: the quantity, its threshold and side
    needs: tuple[str, ...]  # encodings the test needs
    threshold: float
    holds_below: bool  # the claim says quantity < threshold (True) or > threshold (False)
    measure: Callable[[list[dict]], Stat]
    uses_variants: bool = False  # measured on every record; False: on the plain runs only (no randomized positions)


def _absolute_vs_rope(encoding: str):
    def measure(records):
        n = train_length(records)
        return perplexity_ratio(records, encoding, n, "rope", n)
    return measure


def _extrapolation_ratio(label: str):
    def measure(records):
        return perplexity_ratio(records, label, longest_length(records, label), label, train_length(records))
    return measure


def _sinusoidal_minus_alibi(records) -> Stat:
    sinusoidal = _extrapolation_ratio("sinusoidal")(records)
    alibi = _extrapolation_ratio("alibi")(records)
    # Paired by seed index (the same data order and seed for both encodings).
    return stat(s - a for s, a in zip(sinusoidal.values, alibi.values))


def _extrapolation_gain(encoding: str):
    """Per seed: the plain run's ratio ppl(longest) / ppl(L) minus that of its randomized-positions variant."""
    def measure(records):
        plain = _extrapolation_ratio(encoding)(records)
        variant = _extrapolation_ratio(random_positions_label(encoding))(records)
        return stat(p - v for p, v in zip(plain.values, variant.values))  # paired by seed index, as above
    return measure


def _mrr_margin(records) -> Stat:
    """Per seed: NoPE's MRR minus the best MRR among RoPE and the absolute encodings."""
    encodings = [e for e in ("nope", "t5_bias", "alibi", "rope", "sinusoidal", "learned")
                 if any(r.get("position_encoding") == e and r["record_type"] == "task" for r in records)]
    ranks = mean_reciprocal_rank(records, encodings)
    rivals = [ranks[e].values for e in ("rope", "sinusoidal", "learned") if e in ranks]
    if "nope" not in ranks or not rivals:
        return stat([])
    return stat(nope - max(r[i] for r in rivals) for i, nope in enumerate(ranks["nope"].values))


def _copy_ood(encoding: str):
    return lambda records: out_of_distribution_accuracy(records, encoding, "copy")


CLAIMS: tuple[Claim, ...] = (
    Claim("sinusoidal_matches_rope", "In distribution, absolute and relative encodings are close: sinusoidal "
          "reaches about rope's perplexity at the training length.", f"{PRESS_2022}; {HAVIV_2022}",
          "perplexity at L: sinusoidal 20.05, rotary 20.07, T5 bias 19.65, ALiBi 19.73 (Press et al., Table 2)",
          "ppl(sinusoidal, L) / ppl(rope, L) < 1.10", ("sinusoidal", "rope"), 1.10, True,
          _absolute_vs_rope("sinusoidal")),
    Claim("learned_matches_rope", "In distribution, learned absolute positions are close to relative encodings.",
          HAVIV_2022, "learned, sinusoidal and ALiBi within a few percent in perplexity at the training length",
          "ppl(learned, L) / ppl(rope, L) < 1.10", ("learned", "rope"), 1.10, True, _absolute_vs_rope("learned")),
    Claim("alibi_flat", "ALiBi extrapolates: its perplexity stays flat (or improves) beyond the training length.",
          PRESS_2022, "ALiBi 19.73 at L, 18.73 at about 2L, 18.41 at about 5L",
          "ppl(alibi, longest) / ppl(alibi, L) < 1.10", ("alibi",), 1.10, True, _extrapolation_ratio("alibi")),
    Claim("sinusoidal_degrades", "Sinusoidal does not extrapolate: its perplexity climbs steeply beyond the "
          "training length, far more than ALiBi's.", PRESS_2022,
          "sinusoidal 20.05 at L, 43.54 at about 2L, 132.41 at about 5L (ALiBi: 19.73, 18.73, 18.41)",
          "ppl ratio longest / L of sinusoidal minus that of alibi > 0.5", ("sinusoidal", "alibi"), 0.5, False,
          _sinusoidal_minus_alibi),
    Claim("nope_generalizes_best", "On algorithmic tasks, NoPE length-generalizes better than RoPE and absolute "
          "position embeddings.", KAZEMNEJAD_2023,
          "mean reciprocal rank: NoPE 0.69, T5 bias 0.55, ALiBi 0.50, RoPE 0.33, absolute 0.22",
          "MRR(nope) minus the best MRR of rope / sinusoidal / learned, over task x out-of-distribution length, > 0",
          ("nope", "rope"), 0.0, False, _mrr_margin),
    Claim("copy_nope_ood", "On copy, NoPE stays near perfect beyond the trained lengths.", KAZEMNEJAD_2023,
          "NoPE and T5 bias near 1.0 exact match out of distribution on copy",
          "mean copy accuracy of nope over the out-of-distribution test lengths > 0.9", ("nope",), 0.9, False,
          _copy_ood("nope")),
    Claim("copy_t5_ood", "On copy, T5 bias stays near perfect beyond the trained lengths.", KAZEMNEJAD_2023,
          "NoPE and T5 bias near 1.0 exact match out of distribution on copy",
          "mean copy accuracy of t5_bias over the out-of-distribution test lengths > 0.9", ("t5_bias",), 0.9, False,
          _copy_ood("t5_bias")),
    Claim("random_positions_help_rope", "Randomized positions improve length generalization: rope trained with "
          "them loses less beyond the training length than rope trained with ordinary positions.", RUOSS_2023,
          "6000 models over 15 algorithmic reasoning tasks: test accuracy on sequences of unseen length increased "
          "by 12.0% on average (abstract); no language-model numbers, so the direction only is tested here",
          "ppl ratio longest / L of rope minus that of rope + random positions > 0",
          ("rope", random_positions_label("rope")), 0.0, False, _extrapolation_gain("rope"), uses_variants=True),
)


def check_claims(records: list[dict], encodings: list[str]) -> list[dict]:
    """One ``claim`` record per published claim: the published numbers, this run's number and the verdict.

    ``encodings``: the models of the study, by label (an encoding's name, or a variant's label such as
    ``"rope + random positions"``).
    """
    plain = [r for r in records if r.get("random_positions_max") is None]
    out = []
    for claim in CLAIMS:
        missing = [e for e in claim.needs if e not in encodings]
        measured = stat([]) if missing else claim.measure(records if claim.uses_variants else plain)
        if missing:
            verdict, note = INCONCLUSIVE, f"not tested: the study has no {', '.join(missing)}"
        elif not measured.values:
            verdict, note = INCONCLUSIVE, "not tested: no numbers for it in this run"
        else:
            verdict = verdict_against_threshold(measured, claim.threshold, claim.holds_below)
            note = "one seed: no spread to judge by" if measured.n < 2 else ""
        out.append({
            "record_type": "claim", "claim": claim.id, "statement": claim.statement, "source": claim.source,
            "published": claim.published, "test": claim.test, "threshold": claim.threshold,
            "measured": measured.to_dict(), "this_run": measured.format(3), "verdict": verdict, "note": note,
        })
    return out


def claims_table(claim_records: list[dict]) -> str:
    lines = ["| claim | published | test | this run (mean ± std over seeds) | verdict |", "|---|---|---|---:|---|"]
    for r in claim_records:
        verdict = f"**{r['verdict']}**" + (f" ({r['note']})" if r["note"] else "")
        lines.append(f"| {r['statement']} | {r['published']} | {r['test']} | {r['this_run']} | {verdict} |")
    sources = sorted({r["source"] for r in claim_records})
    return "\n".join(lines + ["", "Sources: " + " | ".join(sources)])


__all__ = ["CLAIMS", "Claim", "check_claims", "claims_table", "mean_reciprocal_rank", "perplexity_ratio"]
