"""A saved folder loads with trust_remote_code=True in a fresh interpreter where hf_posenc cannot be imported."""

import json
import os
import subprocess
import sys
import textwrap

import torch

from tests.conftest import ENCODINGS, random_tokens, tiny_model

# Runs in a subprocess: hide hf_posenc from the import system, then load with the Auto classes.
LOADER = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class HidePackage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "hf_posenc" or name.startswith("hf_posenc."):
                raise ImportError("hf_posenc is hidden for this test")

    sys.meta_path.insert(0, HidePackage())
    try:
        import hf_posenc  # noqa: F401
        raise SystemExit("hf_posenc should not be importable here")
    except ImportError:
        pass

    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

    ids, results = torch.tensor(json.loads(sys.argv[1])), {}
    for folder in sys.argv[2:]:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
        model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, attn_implementation="eager")
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        base = AutoModel.from_pretrained(folder, trust_remote_code=True)
        classifier = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True, num_labels=3)
        with torch.no_grad():
            logits = model.eval()(ids).logits
            generated = model.generate(ids[:1, :4], max_new_tokens=3, do_sample=False, pad_token_id=0)
            assert classifier(ids).logits.shape == (ids.shape[0], 3)
            assert base(ids).last_hidden_state.shape[-1] == config.hidden_size
        results[config.position_encoding] = {"logits": logits.tolist(), "generated": generated.tolist()}
    print(json.dumps(results))
    """
)


def load_without_the_package(folders: list[str], ids: torch.Tensor, tmp_path) -> dict:
    """Run ``LOADER`` in a fresh interpreter (hf_posenc hidden, offline): ``{encoding: {logits, generated}}``."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), HF_MODULES_CACHE=str(tmp_path / "modules"))
    result = subprocess.run(
        [sys.executable, "-c", LOADER, json.dumps(ids.tolist()), *folders],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_folders_load_without_the_package(tmp_path):
    ids = random_tokens(batch=2, length=7)
    folders, expected = [], {}
    for encoding in ENCODINGS:
        model = tiny_model(encoding)
        folder = tmp_path / encoding
        model.save_pretrained(folder)
        folders.append(str(folder))
        with torch.no_grad():
            expected[encoding] = (
                model(ids).logits,
                model.generate(ids[:1, :4], max_new_tokens=3, do_sample=False, pad_token_id=0).tolist(),
            )
        auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
        assert set(auto_map) == {"AutoConfig", "AutoModel", "AutoModelForCausalLM", "AutoModelForSequenceClassification"}
        for name in ("configuration_hf_posenc.py", "modeling_hf_posenc.py", "encodings_hf_posenc.py"):
            source = (folder / name).read_text()
            assert "import hf_posenc" not in source and "from hf_posenc" not in source

    loaded = load_without_the_package(folders, ids, tmp_path)
    assert sorted(loaded) == sorted(ENCODINGS)
    for encoding, (logits, generated) in expected.items():
        torch.testing.assert_close(torch.tensor(loaded[encoding]["logits"]), logits, atol=1e-5, rtol=1e-5)
        assert loaded[encoding]["generated"] == generated
