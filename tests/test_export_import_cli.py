"""`ace-jax import` then `ace-jax export`: HF weights -> run checkpoint -> HF, same logits in transformers."""


import numpy as np
import transformers

from ace_jax.cli import main
from ace_jax.models import get_config
from helpers.hf_models import hf_logits, random_hf_model


def test_import_then_export_round_trip(tmp_path, capsys):
    original = random_hf_model(get_config("tiny-moe"), seed=5)
    original.save_pretrained(tmp_path / "hf")
    run = tmp_path / "run"
    assert main(["import", "--hf", str(tmp_path / "hf"), "--run", str(run)]) == 0
    assert (run / "model_config.json").exists() and (run / "checkpoints").is_dir()
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "out"), "--dtype", "float32"]) == 0
    assert "exported step 0" in capsys.readouterr().out
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype="float32")
    ids = np.random.RandomState(1).randint(3, 500, size=(2, 7))
    np.testing.assert_allclose(hf_logits(reloaded, ids), hf_logits(original, ids), atol=1e-5)
    # Importing into a run that already has checkpoints is refused.
    assert main(["import", "--hf", str(tmp_path / "hf"), "--run", str(run)]) == 2


def test_export_errors_name_the_problem(tmp_path, capsys):
    assert main(["export", "--run", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "model_config.json is missing" in capsys.readouterr().err
