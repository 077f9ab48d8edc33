"""Published-claims checks and seed statistics of compare, on hand-made records (no training)."""

from __future__ import annotations

import math

import pytest

from hf_posenc.study.aggregate import Stat, stat, verdict_against_threshold
from hf_posenc.study.claims import CLAIMS, check_claims, claims_table, mean_reciprocal_rank, perplexity_ratio

ENCODINGS = ["sinusoidal", "learned", "rope", "alibi", "t5_bias", "nope"]


def ppl(label, length, value, seed, status="ok"):
    return {"record_type": "perplexity", "position_encoding": label, "label": label, "eval_length": length,
            "train_length": 128, "perplexity": value if status == "ok" else None, "status": status, "seed": seed,
            "sliding": False}


def task(encoding, name, length, accuracy, seed):
    return {"record_type": "task", "position_encoding": encoding, "task": name, "length": length,
            "accuracy": accuracy, "in_distribution": length <= 8, "seed": seed}


def study(sinusoidal_at_train, seeds=(0, 1, 2), noise=0.05):
    """Records of a study where alibi is flat, sinusoidal triples at 8L, and NoPE copies everything."""
    records = []
    for i, seed in enumerate(seeds):
        jitter = noise * (i - 1)
        for label, at_train, at_long in (("rope", 10.0, 17.0), ("alibi", 10.5, 10.8),
                                         ("sinusoidal", sinusoidal_at_train, 3 * sinusoidal_at_train),
                                         ("learned", 10.6, None), ("t5_bias", 11.0, 12.0), ("nope", 12.0, 13.0)):
            records.append(ppl(label, 128, at_train + jitter, seed))
            records.append(ppl(label, 1024, at_long + jitter, seed) if at_long else ppl(label, 1024, None, seed, "unsupported"))
        for encoding in ENCODINGS:
            for length in (4, 8, 12, 16):
                accuracy = 1.0 if encoding == "nope" or length <= 8 else 0.1 * ENCODINGS.index(encoding) / 6
                records.append(task(encoding, "copy", length, accuracy, seed))
    return records


def verdicts(records):
    return {r["claim"]: r["verdict"] for r in check_claims(records, ENCODINGS)}


def test_stat_mean_std_and_format():
    s = stat([1.0, 2.0, 3.0, None, math.nan])
    assert s.n == 3 and s.mean == 2.0 and s.std == pytest.approx(1.0)
    assert s.format() == "2.00 ± 1.00" and stat([4.0]).format() == "4.00" and stat([]).format() == "-"
    assert stat([4.0]).std is None


@pytest.mark.parametrize("values, threshold, below, expected", [
    ([1.0, 1.02, 1.04], 1.1, True, "agrees"),
    ([1.3, 1.32, 1.34], 1.1, True, "disagrees"),
    ([1.0, 1.1, 1.2], 1.1, True, "inconclusive"),
    ([1.0], 1.1, True, "inconclusive"),  # one seed: no spread
    ([0.95, 0.97, 0.99], 0.9, False, "agrees"),
])
def test_verdict_against_threshold(values, threshold, below, expected):
    assert verdict_against_threshold(Stat(tuple(values)), threshold, below) == expected


def test_claims_agree_with_a_study_that_reproduces_the_papers():
    result = verdicts(study(sinusoidal_at_train=10.4))
    assert result["sinusoidal_matches_rope"] == "agrees" and result["learned_matches_rope"] == "agrees"
    assert result["alibi_flat"] == "agrees" and result["sinusoidal_degrades"] == "agrees"
    assert result["nope_generalizes_best"] == "agrees" and result["copy_nope_ood"] == "agrees"
    assert result["copy_t5_ood"] == "disagrees"


def test_a_disagreement_is_reported_not_hidden():
    records = check_claims(study(sinusoidal_at_train=14.0), ENCODINGS)
    row = next(r for r in records if r["claim"] == "sinusoidal_matches_rope")
    assert row["verdict"] == "disagrees" and row["measured"]["mean"] == pytest.approx(1.4, rel=1e-3)
    assert "disagrees" in claims_table(records) and "20.05" in claims_table(records)


def test_one_seed_and_missing_encodings_are_inconclusive():
    assert set(verdicts(study(10.4, seeds=(0,))).values()) == {"inconclusive"}
    records = check_claims(study(10.4), ["rope", "alibi"])
    assert next(r for r in records if r["claim"] == "sinusoidal_matches_rope")["note"].startswith("not tested")


def test_ratio_is_per_seed_and_mrr_ranks_ties_together():
    records = study(10.0)
    assert perplexity_ratio(records, "sinusoidal", 1024, "sinusoidal", 128).mean == pytest.approx(3.0, rel=1e-3)
    assert perplexity_ratio(records, "learned", 1024, "learned", 128).n == 0  # unsupported length: no ratio
    ranks = mean_reciprocal_rank(records, ENCODINGS)
    assert ranks["nope"].mean == 1.0 and ranks["sinusoidal"].mean == pytest.approx(1 / 6)
    tied = [task(e, "copy", 12, 0.0, 0) for e in ENCODINGS]
    assert {s.mean for s in mean_reciprocal_rank(tied, ENCODINGS).values()} == {1.0}


def test_every_claim_names_its_source_and_numbers():
    assert len({c.id for c in CLAIMS}) == len(CLAIMS)
    for claim in CLAIMS:
        assert claim.source and claim.published and claim.test and claim.needs


def randomized(record, label):
    """``record`` as if measured on the randomized-positions variant of its encoding."""
    return {**record, "label": label if record["record_type"] == "perplexity" else record.get("label"),
            "random_positions_max": 1024}


def spoiled(record):
    """A record that would flip the claims if read as a plain run: NoPE forgets how to copy, perplexity explodes."""
    if record["record_type"] == "task":
        return {**record, "accuracy": 0.0}
    return {**record, "perplexity": record["perplexity"] and record["perplexity"] * 50}


def test_randomized_variants_never_change_the_other_verdicts():
    base = study(sinusoidal_at_train=10.4)
    variants = [randomized(spoiled(r), f"{r['position_encoding']} + random positions") for r in base]
    with_variants = check_claims(base + variants, ENCODINGS + ["rope + random positions"])
    alone = check_claims(base, ENCODINGS)
    for row, expected in zip(with_variants, alone):
        if row["claim"] != "random_positions_help_rope":
            assert (row["claim"], row["measured"], row["verdict"]) == (
                expected["claim"], expected["measured"], expected["verdict"])


@pytest.mark.parametrize("variant_at_long, expected", [(11.0, "agrees"), (30.0, "disagrees")])
def test_random_positions_claim_compares_the_variant_with_its_plain_run(variant_at_long, expected):
    records = study(sinusoidal_at_train=10.4)
    for i, seed in enumerate((0, 1, 2)):  # plain rope: 10 at L, 17 at 8L
        jitter = 0.05 * (i - 1)
        for length, value in ((128, 10.0), (1024, variant_at_long)):
            records.append(randomized(ppl("rope", length, value + jitter, seed), "rope + random positions"))
    rows = {r["claim"]: r for r in check_claims(records, ENCODINGS + ["rope + random positions"])}
    row = rows["random_positions_help_rope"]
    assert row["verdict"] == expected and row["measured"]["n"] == 3
    assert row["measured"]["mean"] == pytest.approx(1.7 - variant_at_long / 10.0, abs=0.02)
    missing = {r["claim"]: r for r in check_claims(records, ENCODINGS)}["random_positions_help_rope"]
    assert missing["verdict"] == "inconclusive" and "rope + random positions" in missing["note"]
