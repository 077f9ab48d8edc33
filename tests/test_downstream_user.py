"""The downstream user: someone with only torch and transformers loads a pushed hf_posenc model.

For every encoding, `hf-posenc push --dry-run` writes the folder that would be uploaded. Then ONE fresh
interpreter, in which `import hf_posenc` is made impossible (a meta-path finder refuses the name, because the
package is installed editable in the venv), loads each folder with AutoTokenizer and AutoModelForCausalLM
(trust_remote_code=True), generates through pipeline("text-generation") and takes one Trainer fine-tuning
step. The subprocess reports per encoding as JSON; one test per encoding checks its report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers_model_dir import build_model_dir

from hf_posenc.cli import main
from hf_posenc.model.encodings_hf_posenc import BUILTIN_POSITION_ENCODINGS
from tests.conftest import PATTERNS

ENCODINGS = [*BUILTIN_POSITION_ENCODINGS, *PATTERNS]  # every built-in, from the registry, and per-layer patterns

# Runs in the fresh interpreter: argv = [report_path, folder, folder, ...].
DOWNSTREAM_SCRIPT = r'''
import importlib.abc, json, math, sys

class RefuseHfPosenc(importlib.abc.MetaPathFinder):
    """Make hf_posenc unimportable, as on a machine where it was never installed."""
    def find_spec(self, name, path=None, target=None):
        if name == "hf_posenc" or name.startswith("hf_posenc."):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by the downstream-user test)", name=name)
        return None

sys.meta_path.insert(0, RefuseHfPosenc())
report = {"hf_posenc_importable": True, "models": {}}
try:
    import hf_posenc  # noqa: F401
except ImportError:
    report["hf_posenc_importable"] = False

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments, pipeline
from transformers import DataCollatorForLanguageModeling

report_path, folders = sys.argv[1], sys.argv[2:]
for folder in folders:
    # AutoTokenizer reads config.json first, so it needs trust_remote_code too (or it prompts on a terminal).
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    generator = pipeline("text-generation", model=folder, trust_remote_code=True, device="cpu")
    prompt = "def dumps(obj"
    generated = generator(prompt, max_new_tokens=6, do_sample=False)[0]["generated_text"]

    texts = ["import json\nprint(json.dumps({'a': 1}))\n", "def loads(s):\n    return s\n"]
    train_rows = [{"input_ids": ids} for ids in tokenizer(texts)["input_ids"]]
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    args = TrainingArguments(
        output_dir=folder + "-finetune", max_steps=1, per_device_train_batch_size=2, learning_rate=1e-2,
        report_to=[], save_strategy="no", logging_steps=1, use_cpu=True, disable_tqdm=True,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=train_rows,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
    )
    loss = trainer.train().training_loss
    changed = sum(not torch.equal(before[name], param.detach()) for name, param in model.named_parameters())
    report["models"][folder] = {
        "module": type(model).__module__,
        "position_encoding": model.config.position_encoding,
        "prompt": prompt,
        "generated": generated,
        "loss": loss,
        "loss_finite": math.isfinite(loss),
        "changed_parameters": changed,
        "num_parameters": len(before),
    }
with open(report_path, "w") as handle:
    json.dump(report, handle)
'''


@pytest.fixture(scope="module")
def downstream_report(tmp_path_factory):
    """Dry-run folders for all encodings, then one fresh interpreter without hf_posenc that uses them all."""
    root = tmp_path_factory.mktemp("downstream")
    folders = {}
    for encoding in ENCODINGS:
        model_dir = build_model_dir(root / f"model-{encoding}", encoding, with_eval=True, with_checkpoints=True)
        folders[encoding] = root / f"upload-{encoding}"
        assert main(["push", str(model_dir), "--repo-id", f"someone/tiny-{encoding.replace('+', '-')}", "--dry-run", str(folders[encoding])]) == 0

    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "HF_", "TRANSFORMERS_"))}
    env.update(
        HF_HUB_OFFLINE="1",
        HF_HOME=str(root / "hf_home"),
        HF_MODULES_CACHE=str(root / "hf_modules"),  # the copied remote code goes here, away from other tests
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",  # tiny tensors: threads only add overhead on a shared CPU
    )
    report_path = root / "report.json"
    completed = subprocess.run(
        [sys.executable, "-I", "-c", DOWNSTREAM_SCRIPT, str(report_path), *map(str, folders.values())],
        cwd=root,  # not the repository: src/ is not on the path
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    # A prompt would block a user at a terminal: every call must already carry trust_remote_code=True.
    assert "Do you wish to run the custom code" not in completed.stdout + completed.stderr
    report = json.loads(report_path.read_text())
    return report, {encoding: report["models"][str(folder)] for encoding, folder in folders.items()}


def test_hf_posenc_is_really_hidden(downstream_report):
    report, _ = downstream_report
    assert report["hf_posenc_importable"] is False


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_downstream_user_loads_generates_and_finetunes(downstream_report, encoding):
    _, models = downstream_report
    result = models[encoding]
    # The class came from the copied remote code, not from an installed hf_posenc.
    assert result["module"].startswith("transformers_modules."), result["module"]
    assert "hf_posenc" not in result["module"].split(".")[0]
    assert result["position_encoding"] == encoding
    assert result["generated"].startswith(result["prompt"]) and len(result["generated"]) > len(result["prompt"])
    assert result["loss_finite"], result["loss"]
    assert result["changed_parameters"] > 0, "one Trainer step changed no weight"


def test_dry_run_folder_is_self_contained(tmp_path):
    """The copied remote-code files import only their siblings, never the hf_posenc package."""
    model_dir = build_model_dir(tmp_path / "model", "alibi")
    out = tmp_path / "upload"
    assert main(["push", str(model_dir), "--repo-id", "someone/tiny-alibi", "--dry-run", str(out)]) == 0
    for name in ("configuration_hf_posenc.py", "modeling_hf_posenc.py", "encodings_hf_posenc.py"):
        source = (out / name).read_text()
        assert "import hf_posenc" not in source and "from hf_posenc" not in source
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_hf_posenc.PosEncForCausalLM"
    assert config["auto_map"]["AutoConfig"] == "configuration_hf_posenc.PosEncConfig"
    assert Path(out / "model.safetensors").is_file()
