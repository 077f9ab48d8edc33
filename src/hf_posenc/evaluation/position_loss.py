"""Loss by token position inside the evaluation window: where in a window a model loses its perplexity.

Press et al. (2022, section 4) call the high loss of the first tokens of a non-overlapping window the "early
token curse": those tokens have little context. Past the training length the same curve shows where an
encoding stops working: a model that extrapolates keeps the loss flat (or falling) after position L, one
that does not climbs there. Windows are the same non-overlapping ones ``hf-posenc eval`` scores.

``loss_by_position(model_dir, lengths)`` returns, per length, the mean next-token loss of every position
(position j predicts token j + 1, j = 0 .. L - 2) and the same curve averaged into ``buckets`` equal bins.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch

from .. import run_folder
from .perplexity import check_lengths, eval_token_ids, inspect_model_dir, load_eval_model, plan_windows



@torch.no_grad()
def position_nll_sums(model, token_ids: torch.LongTensor, length: int, starts: Sequence[int], batch_size: int) -> torch.Tensor:
    """Summed next-token NLL at each of the L - 1 predicting positions over the windows at ``starts``."""
    device = next(model.parameters()).device
    offsets = torch.arange(length)
    total = torch.zeros(length - 1, dtype=torch.float64)
    for begin in range(0, len(starts), batch_size):
        chunk = torch.tensor(starts[begin : begin + batch_size])
        input_ids = token_ids[chunk[:, None] + offsets[None, :]].to(device)  # (batch, length)
        logits = model(input_ids=input_ids, use_cache=False).logits.float()  # (batch, length, vocab)
        # (batch, vocab, length - 1) against (batch, length - 1): the loss of predicting token j + 1 at j
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), input_ids[:, 1:], reduction="none")
        total += nll.double().sum(dim=0).cpu()
    return total


def bucket_means(values: Sequence[float], buckets: int) -> list[dict]:
    """``values`` (one per position) averaged into at most ``buckets`` contiguous, near-equal bins."""
    count = len(values)
    edges = sorted({round(i * count / buckets) for i in range(buckets + 1)})
    return [{"first": a, "last": b - 1, "loss": sum(values[a:b]) / (b - a)} for a, b in zip(edges, edges[1:]) if b > a]


def loss_by_position(model_dir: str | Path, lengths: Sequence[int], *, max_windows: int = 16,
                     batch_size: int = 8, buckets: int = 32, output: str | Path | None = None,
                     device=None) -> dict:
    """Mean loss by position at each supported length; writes ``position_loss.json`` in the model folder."""
    lengths = check_lengths(lengths)
    if not isinstance(max_windows, int) or isinstance(max_windows, bool) or max_windows < 1:
        raise ValueError(f"max_windows must be an integer >= 1, got {max_windows!r}")
    if not isinstance(buckets, int) or isinstance(buckets, bool) or buckets < 1:
        raise ValueError(f"buckets must be an integer >= 1, got {buckets!r}")
    info = inspect_model_dir(model_dir)
    supported = [n for n in lengths if info.max_positions is None or n <= info.max_positions]
    start_time = time.perf_counter()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(info.path))
    needed = max(supported, default=0) * max_windows
    token_ids = eval_token_ids(tokenizer, info.data_name, data_config=info.data_config, text_field=info.text_field,
                               max_tokens=needed) if supported else torch.zeros(0, dtype=torch.long)
    model = load_eval_model(info, device=device)
    rows = []
    for length in lengths:
        starts = [s for s, _ in plan_windows(len(token_ids), length, max_windows=max_windows)] if length in supported else []
        if not starts:
            rows.append({"eval_length": length, "num_windows": 0, "losses": [], "buckets": [],
                         "status": "unsupported" if length not in supported else "insufficient_data"})
            continue
        losses = (position_nll_sums(model, token_ids, length, starts, batch_size) / len(starts)).tolist()
        rows.append({"eval_length": length, "num_windows": len(starts), "losses": losses,
                     "buckets": bucket_means(losses, buckets), "status": "ok"})
    result = {"position_encoding": info.position_encoding, "train_length": info.train_length,
              "max_windows": max_windows, "eval_runtime_s": time.perf_counter() - start_time, "results": rows}
    path = Path(output) if output is not None else info.path / run_folder.POSITION_LOSS_FILE
    run_folder.write_position_loss(path, result)
    return result


__all__ = ["loss_by_position", "bucket_means", "position_nll_sums"]
