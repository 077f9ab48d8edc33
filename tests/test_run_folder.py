"""The run-folder format: one reader and one writer per file; malformed files named in one line."""


import pytest

from hf_posenc import run_folder
from hf_posenc.errors import UsageError


def test_data_records_round_trip_and_old_prose_still_parses():
    record = run_folder.data_record("hub", "Salesforce/wikitext", "wikitext-2-raw-v1")
    assert run_folder.parse_data_record(record) == record
    old = run_folder.parse_data_record("hub: Salesforce/wikitext (wikitext-2-raw-v1)")
    assert (old["kind"], old["name"], old["config"]) == ("hub", "Salesforce/wikitext", "wikitext-2-raw-v1")
    assert run_folder.parse_data_record("stdlib: Python 3.11 standard library sources (/x)")["python_version"] == "3.11"
    assert run_folder.parse_data_record("local: /data/corpus")["name"] == "/data/corpus"
    with pytest.raises(ValueError, match="data.kind must be one of"):
        run_folder.parse_data_record({"kind": "ftp"})


def test_writers_refuse_a_schema_that_drifts(tmp_path):
    with pytest.raises(ValueError, match=r"missing keys \['block_size'"):
        run_folder.write_train_summary(tmp_path, {"position_encoding": "rope"})
    with pytest.raises(ValueError, match="a row is a training row or"):
        run_folder.MetricsLog(tmp_path / "m.jsonl").write({"step": 1, "eval_loss": 2.0, "extra": 1})
    with pytest.raises(ValueError, match=r"missing keys \['elapsed_s'"):
        run_folder.MetricsLog(tmp_path / "m.jsonl").write({"step": 1, "loss": 2.0})
    assert not (tmp_path / run_folder.SUMMARY_FILE).exists() and not (tmp_path / "m.jsonl").exists()


def test_metrics_reader_skips_a_partial_last_line(tmp_path):
    path = tmp_path / run_folder.METRICS_FILE
    path.write_text('{"step": 1, "eval_loss": 2.0}\n{"step": 2, "eval_lo')
    rows, skipped = run_folder.read_metrics(path)
    assert rows == [{"step": 1, "eval_loss": 2.0}] and skipped == 1
    assert run_folder.MetricsLog(path).truncate_after(5) == 1
    assert path.read_text() == '{"step": 1, "eval_loss": 2.0}\n'


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "the file is empty"), (b"[1, 2]", "got a JSON list"), (b'{"results": ', "not valid JSON"),
     (b"\xff\xfe{}", "not UTF-8"), (b'{"results": {}}', "'results' list"),
     (b'{"results": [{"eval_length": "64"}]}', "integer 'eval_length'"),
     (b'{"results": [], "data": 3}', "data must be an object or a string")],
)
def test_a_malformed_eval_json_is_named_in_one_line(tmp_path, content, message):
    path = tmp_path / run_folder.EVAL_FILE
    path.write_bytes(content)
    with pytest.raises(UsageError, match=message) as error:
        run_folder.read_eval(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"a: [1,", "not valid YAML"), (b"- 1\n- 2\n", "expected a mapping"), (b"\xff\xfe", "not UTF-8")],
)
def test_a_malformed_run_config_is_named_in_one_line(tmp_path, content, message):
    (tmp_path / run_folder.RUN_CONFIG_FILE).write_bytes(content)
    with pytest.raises(UsageError, match=message):
        run_folder.read_run_config(tmp_path)


def test_run_settings_read_nested_and_flat_configs():
    assert run_folder.run_setting({"training": {"lr": 0.1}}, "training", "lr", "learning_rate") == 0.1
    assert run_folder.run_setting({"learning_rate": 0.2}, "training", "lr", "learning_rate") == 0.2
    assert run_folder.run_setting(None, "training", "lr") is None


def test_eval_variants_never_replace_eval_json(tmp_path):
    assert run_folder.eval_variant_name(None, None) is None
    name = run_folder.eval_variant_name({"rope_type": "yarn", "factor": 4.0}, "/data/my notes.txt")
    assert name == "rope-yarn_data-my_notes.txt"
    assert run_folder.eval_variant_name(None, None, "train") == "split-train"
    assert run_folder.default_eval_path(tmp_path, None) == tmp_path / "eval.json"
    assert run_folder.default_eval_path(tmp_path, name).parent.name == run_folder.EVAL_VARIANTS_DIR


def test_the_lock_records_its_holder_and_refuses_a_second_writer(tmp_path):
    with run_folder.RunLock(tmp_path) as lock:
        assert "pid" in lock.path.read_text() and "host" in lock.path.read_text()
        with pytest.raises(UsageError, match="in use by another run"):
            run_folder.RunLock(tmp_path).acquire()
    run_folder.RunLock(tmp_path).acquire().release()  # free again once released


def test_output_paths_are_checked(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="is a file, not a folder"):
        run_folder.check_writable_dir(tmp_path / "file" / "sub", "--output-dir")
    with pytest.raises(UsageError, match="is a folder"):
        run_folder.check_writable_file(tmp_path, "--output")
    assert run_folder.check_writable_file(tmp_path / "new" / "eval.json", "--output") == tmp_path / "new" / "eval.json"


def test_study_results_round_trip_and_a_malformed_file_is_named(tmp_path):
    records = [{"record_type": "training", "position_encoding": "rope", "final_loss": 2.5}]
    run_folder.write_study_results(tmp_path, records, {"total": {"wall_s": 1.0}}, "# results\n")
    assert run_folder.read_study_results(tmp_path) == records
    assert (tmp_path / run_folder.STUDY_MARKDOWN_FILE).read_text() == "# results\n"
    (tmp_path / run_folder.STUDY_RESULTS_FILE).write_text('{"record_type": "x"}')
    with pytest.raises(UsageError, match="results.json: expected a list of records"):
        run_folder.read_study_results(tmp_path)
