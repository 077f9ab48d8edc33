"""Perplexity from summed token losses: an ``evaluate`` metric shipped with hf_posenc, loaded by path (offline).

The Hub's ``perplexity`` metric downloads and runs a model itself; this one only aggregates. The caller runs
its own model over windows of text and adds, per window, the summed negative log-likelihood (in nats) of
the tokens it scored and how many tokens that was. ``compute`` returns the token-weighted result:

    loss       = sum(losses) / sum(num_tokens)      (mean NLL per token, nats)
    perplexity = exp(loss)

Weighting by token count makes the result independent of how the tokens were grouped into windows or
batches, and lets several processes add their windows before one ``compute``.

Usage::

    import evaluate
    from hf_posenc.evaluation.perplexity import PERPLEXITY_METRIC_DIR
    metric = evaluate.load(str(PERPLEXITY_METRIC_DIR))
    metric.add_batch(losses=[12.3, 10.1], num_tokens=[7, 7])
    metric.compute()  # {"perplexity": ..., "loss": ..., "num_tokens": 14}
"""

import math

import datasets
import evaluate

_DESCRIPTION = "Token-weighted perplexity, exp(sum of token NLLs / number of tokens), from per-window summed losses."

_KWARGS_DESCRIPTION = """
Args:
    losses (`list` of `float`): summed negative log-likelihood (natural log) of the scored tokens of each window.
    num_tokens (`list` of `int`): number of scored tokens of each window (>= 0).
Returns:
    perplexity (`float`): exp(loss); `None` when no token was scored.
    loss (`float`): mean negative log-likelihood per token in nats; `None` when no token was scored.
    num_tokens (`int`): total number of scored tokens.
Examples:
    >>> metric = evaluate.load("path/to/hf_posenc/metrics/perplexity")
    >>> metric.compute(losses=[2.0, 4.0], num_tokens=[2, 2])
    {'perplexity': 4.4816890703380645, 'loss': 1.5, 'num_tokens': 4}
"""

_CITATION = ""


class Perplexity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"losses": datasets.Value("float64"), "num_tokens": datasets.Value("int64")}),
        )

    def _compute(self, losses, num_tokens):
        if any(count < 0 for count in num_tokens):
            raise ValueError(f"num_tokens must be >= 0 for every window, got {list(num_tokens)}")
        total_tokens = int(sum(num_tokens))
        if total_tokens == 0:
            return {"perplexity": None, "loss": None, "num_tokens": 0}
        loss = math.fsum(losses) / total_tokens
        return {"perplexity": math.exp(loss), "loss": loss, "num_tokens": total_tokens}
