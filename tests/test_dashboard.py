"""Dashboards driven from Python: a 30-block synthetic report (responsiveness), a real tiny Llama through `quantize`
(live callback, what-if from its store_dir, reopening from a saved report), the static fallback and lazy imports.
Every control change is timed and printed; each must redraw in < 1 s on this CPU."""
import subprocess, sys, time
import numpy as np
import pytest

pytest.importorskip("ipywidgets"); pytest.importorskip("plotly"); pytest.importorskip("anywidget")
import plotly.graph_objects as go
from gptq_nb.quant import QuantizeConfig
from gptq_nb import dashboard as D


@pytest.fixture(scope="module")
def rep30(): return D.synthetic_report(n_blocks=30)


def _timed(panel, label, control, value):
    t = time.perf_counter(); control.value = value; dt = time.perf_counter() - t
    print(f"  {label}: {1000 * dt:.1f} ms"); return dt


def test_30_block_controls_redraw_fast(rep30):
    assert len(rep30.table) == 210
    print("\n30 blocks × 7 linears, Python-side redraw after a control change:")
    ex = D.layer_explorer(rep30)
    z_log = np.array(ex.figs["strip"].data[0].z, dtype=float)
    times = [_timed(ex, "explorer log off", ex.controls["log"], False)]
    z_lin = np.array(ex.figs["strip"].data[0].z, dtype=float)
    np.testing.assert_allclose(np.log10(z_lin), z_log, rtol=1e-6)
    times.append(_timed(ex, "explorer metric -> loss_ratio", ex.controls["metric"], "loss_ratio"))
    assert np.nanmax(np.array(ex.figs["strip"].data[0].z, dtype=float)) < 1   # GPTQ beats RTN everywhere
    times.append(_timed(ex, "explorer layer -> block 29 down_proj", ex.controls["layer"], "model.layers.29.mlp.down_proj"))
    assert ex.figs["detail"].fig.layout.title.text == "model.layers.29.mlp.down_proj"
    sh = D.scale_histograms(rep30, D.synthetic_report(n_blocks=30, config=QuantizeConfig(group_size=64)))
    times.append(_timed(sh, "histogram per block", sh.controls["by"], "block"))
    times.append(_timed(sh, "histogram block 29", sh.controls["key"], "block 29"))
    n_out = int(np.sum(sh.figs["hist"].data[1].y))
    times.append(_timed(sh, "histogram outlier z 1.5", sh.controls["k"], 1.5))
    assert int(np.sum(sh.figs["hist"].data[1].y)) > n_out
    sp = D.speed_size_panel(rep30, bench=[])
    times.append(_timed(sp, "size view -> bits/weight", sp.controls["view"], "bpw"))
    assert max(times) < 1.0, times


def test_explorer_click_selects_layer(rep30):
    ex = D.layer_explorer(rep30)
    ex.select(7, "gate_proj")
    assert ex.controls["layer"].value == "model.layers.7.mlp.gate_proj"
    assert list(ex.figs["strip"].data[1].x) == [7] and list(ex.figs["strip"].data[1].y) == ["gate_proj"]
    np.testing.assert_allclose(ex.figs["detail"].data[3].y, rep30.layers["model.layers.7.mlp.gate_proj"]["h_diag"].numpy())


def test_static_fallback_when_the_view_fails(monkeypatch, rep30):
    "A view that can't be created (as on a frontend without anywidget) gives static figures, same controls."
    def broken(*a, **k): raise RuntimeError("no widget manager")
    monkeypatch.setattr(D.core, "_plotly_view", broken)
    with pytest.warns(UserWarning, match="static figures"):
        ex = D.layer_explorer(rep30)
    assert ex.figs["strip"].static and isinstance(ex.figs["strip"].widget, __import__("ipywidgets").Output)
    ex.controls["metric"].value = "rel_err"; ex.controls["log"].value = False
    assert np.array(ex.figs["strip"].data[0].z, dtype=float)[0, 0] == pytest.approx(rep30.table.rel_err.iloc[0], rel=1e-6)
    shown = ex.figs["strip"].widget.outputs[0]["data"][D.core.PLOTLY_MIME]["data"][0]["z"]   # what the browser draws
    assert shown[0][0] == pytest.approx(rep30.table.rel_err.iloc[0], rel=1e-6)


def test_colab_means_static(monkeypatch):
    monkeypatch.setitem(sys.modules, "google.colab", type(sys)("google.colab"))
    assert D.want_static(None) is True and D.want_static(False) is False


def test_import_is_lazy():
    code = "import sys, gptq_nb, gptq_nb.dashboard; assert not {'ipywidgets', 'plotly'} & set(sys.modules), 'eager import'"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_real_quantize_live_whatif_reopen(tmp_path):
    "A real tiny Llama through `quantize`: live callback, what-if from its store_dir, export-free reopen from disk."
    from gptq_nb.model import tiny_causal_lm
    from gptq_nb.quantize import quantize
    model = tiny_causal_lm("llama", layers=2, hidden=64, vocab=256)
    calib = [list(np.random.default_rng(i).integers(0, 256, 64)) for i in range(8)]
    live = D.live_dashboard(model=model, every=0.0)
    assert live.progress.max == 14
    cfg = QuantizeConfig(group_size=32, dynamic={r"+:.*\.1\.mlp\.down_proj": {"bits": 8}})
    rep = quantize(model, calib, cfg, callback=live.callback, store_dir=tmp_path / "store", progress=False)
    live.finish(rep)
    assert live.progress.value == 14 and live.progress.bar_style == "success"
    z = np.array(live.figs["strip"].data[0].z, dtype=float)
    assert z.shape == (7, 2) and np.isfinite(z).all()
    t = rep.table.set_index("name")
    for name in ("model.layers.1.mlp.up_proj", "model.layers.1.mlp.down_proj"):   # 4-bit, and 8-bit by `dynamic`
        same = D.requantize_layer(tmp_path / "store", name, rep.config)
        assert same["bits"] == t.bits[name]
        assert same["loss"] == pytest.approx(t.loss[name], rel=1e-4)   # the stored W/H and the config reproduce the run
    name = "model.layers.1.mlp.up_proj"
    wi = D.what_if(rep, tmp_path / "store", layer=name)
    wi.controls["group"].value = -1; wi.controls["run"].click()
    assert wi.trials[-1]["group_size"] == -1 and wi.trials[-1]["loss"] > same["loss"]   # per-channel is coarser
    rep.save(tmp_path / "ckpt")
    again = D.dashboard(tmp_path / "ckpt")
    assert len(again.panels["layers"].controls["layer"].options) == 14
    assert "what_if" not in again.panels and "export" not in again.panels


def test_export_without_io_says_so(monkeypatch, rep30):
    monkeypatch.setattr(D, "_save_fn", lambda: None)
    xp = D.export_panel(model=object(), report=rep30)
    assert xp.controls["export"].disabled and "not available" in xp.status.value


def test_other_architecture_gpt2_labels():
    "GPT-2's `attn.c_proj` and `mlp.c_proj` share a short name: both keep their own row in the heat-strip."
    from gptq_nb.model import tiny_causal_lm
    from gptq_nb.quantize import quantize
    rep = quantize(tiny_causal_lm("gpt2", layers=2), [list(np.random.default_rng(i).integers(0, 256, 64)) for i in range(4)],
                   QuantizeConfig(group_size=32), progress=False)
    ex = D.layer_explorer(rep)
    assert list(ex.figs["strip"].data[0].y) == ["c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"]
    assert np.isfinite(np.array(ex.figs["strip"].data[0].z, dtype=float)).all()
    ex.select(1, "mlp.c_proj")
    assert ex.controls["layer"].value == "transformer.h.1.mlp.c_proj"
