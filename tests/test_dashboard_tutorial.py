"""The dashboard tutorial's set-up, without running the whole notebook: it finds the default model where `make demo`
puts it (the repository's `models/`, while the notebook runs in `nbs/`), and then uses the real model by default."""
import json, os
from pathlib import Path
import pytest
from gptq_nb.demo import DEFAULT_GGUF, models_dir

TUTORIAL = Path(__file__).resolve().parents[1] / "nbs" / "45_tutorial_dashboards.ipynb"


def _cell(marker):
    "The source of the tutorial's code cell that contains `marker`."
    cells = json.loads(TUTORIAL.read_text())["cells"]
    return next("".join(c["source"]) for c in cells if c["cell_type"] == "code" and marker in "".join(c["source"]))


@pytest.fixture
def repo(tmp_path, monkeypatch):
    "A checkout after `make demo`: models/<the GGUF> at its root; the notebook's working directory is nbs/."
    (tmp_path / "models").mkdir(); (tmp_path / "models" / DEFAULT_GGUF).write_bytes(b"GGUF")
    (tmp_path / "nbs").mkdir()
    monkeypatch.delenv("GPTQ_NB_MODELS", raising=False); monkeypatch.chdir(tmp_path / "nbs")
    return tmp_path


def test_tutorial_finds_the_model_make_demo_fetched(repo):
    ns = dict(MODEL="auto", Path=Path, DEFAULT_GGUF=DEFAULT_GGUF, models_dir=models_dir)
    exec(_cell("def find_default_gguf"), ns)
    assert ns["gguf"] == (repo / "models" / DEFAULT_GGUF).resolve()
    assert ns["MODEL"] == "smollm2"          # the real model is the default when it is there


def test_tutorial_falls_back_to_tiny_and_says_why(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("GPTQ_NB_MODELS", raising=False); monkeypatch.chdir(tmp_path)
    ns = dict(MODEL="auto", Path=Path, DEFAULT_GGUF=DEFAULT_GGUF, models_dir=models_dir)
    exec(_cell("def find_default_gguf"), ns)
    assert ns["MODEL"] == "tiny" and "not found" in capsys.readouterr().out
    notes = "".join("".join(c["source"]) for c in json.loads(TUTORIAL.read_text())["cells"] if c["cell_type"] == "markdown")
    assert "random" in notes and "nothing learned" in notes   # why GPTQ can look no better than RTN there


def test_tutorial_model_choice_follows_the_environment(monkeypatch):
    ns = {}
    monkeypatch.setenv("GPTQ_NB_TUTORIAL_MODEL", "smollm2"); exec(_cell("MODEL ="), ns); assert ns["MODEL"] == "smollm2"
    monkeypatch.delenv("GPTQ_NB_TUTORIAL_MODEL"); monkeypatch.delenv("IN_TEST", raising=False)
    exec(_cell("MODEL ="), ns); assert ns["MODEL"] == "auto"
