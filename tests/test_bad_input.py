"""Malformed input files for ``hf-posenc train``: one line naming the file and what is wrong, exit 2, no folder."""

import pytest

from hf_posenc.cli import main
from hf_posenc.data.corpus import embedded_corpus_root

TINY = """
model: {{hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 4, max_position_embeddings: 64}}
data: {{name: {data}, block_size: 32}}
tokenizer: {{vocab_size: 300, cache_dir: {cache}}}
training: {{max_steps: 2, per_device_batch_size: 2, save_steps: 0, eval_steps: 0, report_to: none, cpu_threads: 1}}
"""


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("numbers.jsonl", b'{"text": 5}\n{"text": 7}\n', "field 'text' holds int64 values, not text"),
        ("latin1.txt", "caf\u00e9\n\nna\u00efve\n".encode("latin-1"), "is not UTF-8 text (byte 3, line 1)"),
        ("broken.jsonl", b'{"text": "a"}\n{"text": "b"\n', "line 2 is not valid JSON"),
        ("list.jsonl", b'{"text": "a"}\n["b"]\n', "line 2 is a JSON list, not an object"),
        ("empty.txt", b"", "no documents found"),
    ],
)
def test_a_malformed_data_file_is_named(tmp_path, capsys, name, content, message):
    (tmp_path / name).write_bytes(content)
    config = tmp_path / "run.yaml"
    config.write_text(TINY.format(data=tmp_path / name, cache=tmp_path / "cache"))
    assert main(["train", "--config", str(config), "--output-dir", str(tmp_path / "out"), "--no-progress"]) == 2
    error = capsys.readouterr().err
    last = error.strip().splitlines()[-1]
    assert last.startswith("hf-posenc train: error:") and message in last and "Traceback" not in error, error
    assert not (tmp_path / "out").exists()


def test_a_config_file_that_is_not_utf8_is_named(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_bytes(b"model: {hidden_size: 32}\n# \xff\n")
    assert main(["train", "--config", str(config), "--output-dir", str(tmp_path / "out"), "--no-progress"]) == 2
    assert "run.yaml' is not UTF-8 text (byte 27)" in capsys.readouterr().err


def test_flex_attention_training_on_cpu_is_refused_before_any_work(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("textwrap.py", "shlex.py"):
        (corpus / f"{name}.txt").write_text((embedded_corpus_root() / name).read_text())
    config = tmp_path / "run.yaml"
    config.write_text(TINY.format(data=corpus, cache=tmp_path / "cache"))
    code = main(["train", "--config", str(config), "--output-dir", str(tmp_path / "out"), "--no-progress",
                 "--set", "model.attn_implementation=flex_attention"])
    assert code == 2 and "FlexAttention has no backward pass there" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag", ["--output", "--summary", "--plot"])
def test_a_bench_output_under_a_file_is_refused_before_measuring(tmp_path, capsys, monkeypatch, flag):
    import hf_posenc.bench.runner as runner

    monkeypatch.setattr(runner, "run_benchmark", lambda options: pytest.fail("measured before checking the output"))
    (tmp_path / "file").write_text("x")
    assert main(["bench", "--preset", "tiny", flag, str(tmp_path / "file" / "out.json")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_a_compare_output_dir_under_a_file_is_refused_before_training(tmp_path, capsys, monkeypatch):
    import hf_posenc.train.engine as engine

    monkeypatch.setattr(engine, "train", lambda *a, **k: pytest.fail("trained before checking the output"))
    (tmp_path / "file").write_text("x")
    assert main(["compare", "--output-dir", str(tmp_path / "file" / "study"), "--no-progress"]) == 2
    assert "compare output directory" in capsys.readouterr().err
