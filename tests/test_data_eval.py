"Checks of gptq_nb.data / gptq_nb.eval that don't fit the notebooks: search order, folder sources, real-file facts."
import json, math, random
from pathlib import Path
import pytest, torch
from gptq_nb import data as D
from gptq_nb.data import (default_data_dir, get_calibration, c4_calibration, tiny_tokenizer, wikitext2_test_text,
                          sample_windows, named_docs)
from gptq_nb.eval import eval_windows, perplexity, model_size

DATA = default_data_dir()
needs_data = pytest.mark.skipif(DATA is None, reason="no local data folder (set GPTQ_NB_DATA)")


@pytest.fixture(scope="module")
def tok(): return tiny_tokenizer()


def test_default_data_dir_search_order(tmp_path, monkeypatch):
    monkeypatch.delenv("GPTQ_NB_DATA", raising=False)
    repo = tmp_path / "work" / "main"; (repo / "gptq_nb").mkdir(parents=True)
    (tmp_path / "work" / "shared" / "data").mkdir(parents=True)
    monkeypatch.setattr(D, "_repo_dir", lambda: repo)
    assert default_data_dir() == tmp_path / "work" / "shared" / "data"  # beside the repo wins over /work/shared/data
    monkeypatch.setenv("GPTQ_NB_DATA", str(tmp_path))
    assert default_data_dir() == tmp_path                              # the environment wins over both
    monkeypatch.delenv("GPTQ_NB_DATA")
    monkeypatch.setattr(D, "_repo_dir", lambda: tmp_path / "nowhere" / "repo")
    expected = Path("/work/shared/data") if Path("/work/shared/data").is_dir() else None
    assert default_data_dir() == expected


@needs_data
def test_name_folder_and_file_sources_agree(tok):
    "'c4', the data folder, the c4/ folder and the .jsonl file all give A1's windows."
    f = next((DATA / "c4").glob("*.jsonl"))
    ref = torch.stack([s["input_ids"] for s in c4_calibration(tok, n_samples=8, seqlen=128, progress=False)])
    for src in ("c4", DATA, DATA / "c4", f, str(f)):
        got = torch.stack([s["input_ids"] for s in get_calibration(src, tok, 8, 128, progress=False)])
        assert torch.equal(got, ref), src


def test_running_text_is_one_document(tmp_path, tok):
    "A WikiText .raw file is one document: windows are slices of the whole file's tokens, drawn with the A1 draws."
    lines = [" = Title = \n", " \n"] + [f" Line {i} says something about quantization .\n" for i in range(80)]
    f = tmp_path / "wiki.train.raw"; f.write_text("".join(lines))
    ids = torch.tensor(D._encode(tok, "\n\n".join(r if r.strip() else "" for r in lines)))
    cal = get_calibration(f, tok, n_samples=5, seqlen=32, seed=7, progress=False)
    rng = random.Random(7); expect = []
    for _ in range(5):
        assert rng.randrange(1) == 0
        i = rng.randrange(len(ids) - 32); expect.append(ids[i:i + 32])
    assert torch.equal(torch.stack([s["input_ids"] for s in cal]), torch.stack(expect))
    # a folder with only this train file is a valid source; with only test/valid files it is refused
    assert len(get_calibration(tmp_path, tok, n_samples=2, seqlen=32, progress=False)) == 2
    f.rename(tmp_path / "wiki.test.raw")
    with pytest.raises(FileNotFoundError, match="never used for calibration"):
        get_calibration(tmp_path, tok, n_samples=2, seqlen=32)


def test_all_short_documents_error_is_specific(tok):
    docs = ["one two three", "four five"]
    with pytest.raises(ValueError, match=r"All 2 documents .* longest has \d+"):
        sample_windows(docs, tok, n_samples=3, seqlen=50, progress=False)


def test_hub_fallback_reaches_load_dataset(monkeypatch, tmp_path):
    "Offline here: checked only up to a stand-in for datasets.load_dataset."
    import datasets
    seen = {}
    def fake(**kw): seen.update(kw); return {"text": ["x y z"]}
    monkeypatch.setattr(datasets, "load_dataset", fake)
    monkeypatch.setenv("GPTQ_NB_DATA", str(tmp_path))  # an empty data folder: no local copy
    assert named_docs("c4") == ["x y z"] and seen["path"] == "allenai/c4"


def test_perplexity_device_and_dtype(tok):
    "Explicit device, a bfloat16 model (loss still summed in float32/64), and the size of a bf16 model."
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)
    m = LlamaForCausalLM(cfg)
    w = torch.randint(0, len(tok), (3, 40))
    p32 = perplexity(m, w, device="cpu", progress=False)
    m16 = LlamaForCausalLM(cfg).to(torch.bfloat16); m16.load_state_dict(m.state_dict())
    p16 = perplexity(m16, w, batch_size=2, progress=False)
    assert math.isfinite(p16) and abs(math.log(p16) - math.log(p32)) < 0.05
    assert model_size(m16)["total"] * 2 == model_size(m)["total"]  # buffers (rotary) are cast too


@pytest.mark.skipif(DATA is None, reason="needs the data folder")
def test_a1_text_tokenizes_like_the_protocol_says(default_gguf):
    "PROTOCOL/SOURCES: 304,986 SmolLM2 tokens, 148 windows of 2048 (the model from where `make demo` keeps it)."
    from transformers import AutoTokenizer
    t = AutoTokenizer.from_pretrained(default_gguf.parent, gguf_file=default_gguf.name)
    ids = D._encode(t, wikitext2_test_text())
    assert len(ids) == 304_986
    w = eval_windows(t, wikitext2_test_text()[:200_000], 2048)  # the windows are the leading slices of those ids
    assert torch.equal(w[:5].flatten(), torch.tensor(ids[:5 * 2048]))
