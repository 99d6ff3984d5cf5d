"""The dashboards in a real browser: JupyterLab on 127.0.0.1 (token, free port) + headless Debian chromium via Playwright.

1. The tutorial `nbs/45_tutorial_dashboards.ipynb` (a copy, so nothing is saved into the repo) is opened and run
   from the Run menu; we wait for the plotly plots and widgets, move controls, check that the figures changed, that
   the browser console has no errors, that the reopened dashboard's block axis starts at block 0 and the export
   button's label fits, and save screenshots under `artifacts/dashboards/`. It runs on the tiny model unless
   `GPTQ_NB_TUTORIAL_MODEL=smollm2` (with `GPTQ_NB_MODELS` naming the folder `make demo` filled): that is how the
   README's screenshots of the real default model are made (minutes on a CPU; copy them to docs/img/).
2. A 30-block synthetic report: each control change must redraw (click -> kernel -> figure repainted) in < 1 s, with
   anywidget's 2-s set-up limit made to expire for every model at once (what a loaded machine does to some of them;
   plotly's FigureWidget then dropped every update, see nbs/40) and plotly.js coming from the kernel.

Skips with a reason when chromium/playwright/jupyterlab are missing, except in CI (CI=true), where it fails instead.
"""
import json, os, re, shutil, socket, subprocess, sys, secrets, tempfile, time, urllib.request
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
ART = ROOT / "artifacts" / "dashboards"
TUTORIAL = ROOT / "nbs" / "45_tutorial_dashboards.ipynb"
IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
TUTORIAL_MODEL = os.environ.get("GPTQ_NB_TUTORIAL_MODEL", "tiny")
RUN_S = 300 if TUTORIAL_MODEL == "tiny" else 1800   # the real model quantizes twice and evaluates three times on a CPU
CHROMIUM = os.environ.get("GPTQ_NB_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


def _missing():
    "Why the browser test can't run here, or None."
    if not Path(CHROMIUM).exists(): return f"no chromium at {CHROMIUM} (apt-get install -y chromium)"
    for mod in ("playwright", "jupyterlab", "ipywidgets", "plotly", "anywidget"):
        try: __import__(mod)
        except ImportError: return f"python package {mod} is not installed (pip install 'gptq_nb[dashboard,dev]')"
    return None


@pytest.fixture(scope="module")
def lab():
    "A JupyterLab server on a free port, root = a temp dir holding a copy of the tutorial; yields (base_url, token, root)."
    why = _missing()
    if why:
        if IN_CI: pytest.fail(f"browser test cannot run in CI: {why}")
        pytest.skip(why)
    root = Path(tempfile.mkdtemp(prefix="gptq_nb_lab_"))
    shutil.copy(TUTORIAL, root / TUTORIAL.name)
    settings = root / ".settings"
    for ext, cfg in {"@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},  # keep every cell in the DOM
                     "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False}}.items():
        f = settings / f"{ext}.jupyterlab-settings"; f.parent.mkdir(parents=True, exist_ok=True); f.write_text(json.dumps(cfg))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    token = secrets.token_hex(16)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "JUPYTERLAB_SETTINGS_DIR": str(settings), "JUPYTERLAB_WORKSPACES_DIR": str(root / ".workspaces"),
           "JUPYTER_CONFIG_DIR": str(root / ".jupyter"), "GPTQ_NB_STATIC_FIGS": "0",
           "GPTQ_NB_TUTORIAL_MODEL": TUTORIAL_MODEL}
    log = open(root / "lab.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip=127.0.0.1",
                             f"--port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
                             "--LabApp.news_url=", "--ServerApp.open_browser=False"],
                            cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            if proc.poll() is not None: break
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2).read(); break
            except OSError: time.sleep(0.5)
        if proc.poll() is not None:
            pytest.fail(f"JupyterLab exited (rc {proc.returncode}):\n{(root / 'lab.log').read_text()[-3000:]}")
        yield base, token, root
    finally:
        proc.terminate()
        try: proc.wait(15)
        except subprocess.TimeoutExpired: proc.kill()
        log.close()
        shutil.rmtree(root, ignore_errors=True)


# Console errors that come from the offline sandbox or JupyterLab itself, never from our widgets.
# anywidget rejects a model whose set-up takes over 2 s ("Failed to initialize model") and then drops the kernel's
# messages to it; our figure views get none after they are created (nbs/40), which the redraw checks below verify.
BENIGN = [re.compile(p) for p in (r"favicon", r"/api/workspaces", r"lsp", r"ERR_INTERNET_DISCONNECTED",
                                  r"ERR_NAME_NOT_RESOLVED", r"fonts\.googleapis", r"cdn\.",
                                  r"\[anywidget\] Failed to initialize model")]


def _open(page, base, token, name):
    ws = re.sub(r"\W", "-", name)  # one fresh workspace per notebook: only this notebook is open
    page.goto(f"{base}/lab/workspaces/{ws}/tree/{name}?reset&token={token}")
    page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]', timeout=120_000)


def _run_all(page):
    "Run > Run All Cells; retried while the kernel is still connecting (the first request is then dropped)."
    page.wait_for_selector(".jp-StatusBar-TextItem >> text=/\\| Idle/", timeout=120_000)  # kernel connected
    for attempt in range(5):
        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
        page.locator('.lm-Menu-item[data-command="runmenu:run-all"]').click()
        try:
            page.wait_for_function("() => { const p = document.querySelector('.jp-CodeCell .jp-InputArea-prompt');"
                                   " return p && /\\[(\\*|\\d+)\\]/.test(p.innerText); }", timeout=10_000)
            return
        except Exception: pass
    raise AssertionError("Run All Cells did not start the kernel after 5 tries")


def _wait_done(page, selector, timeout_s=300):
    "Wait until `selector` is shown, failing early (with the traceback text) when a cell raised."
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        if page.locator(selector).count(): return
        err = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
        tb = [t for t in err.all_inner_texts() if "Traceback" in t or "Error" in t]
        if tb: raise AssertionError("a notebook cell failed:\n" + tb[0][-3000:])
        page.wait_for_timeout(500)
    raise AssertionError(f"{selector} did not appear within {timeout_s} s")


REDRAW_JS = """async ([sel, idx, ctrl, plot, trace, key]) => {
  const root = document.querySelectorAll(sel)[idx];
  // re-query each time: a static figure is replaced by a new plot element on every redraw
  const snap = () => { const gd = root.querySelectorAll('.js-plotly-plot')[plot];
                       return gd && gd.data ? JSON.stringify(gd.data[trace][key]) : null; };
  const before = snap();
  const el = root.querySelector(ctrl);
  const t0 = performance.now();
  el.click();
  while (snap() === before || snap() === null) {
    await new Promise(r => requestAnimationFrame(r));
    if (performance.now() - t0 > 15000) return {ms: -1, before, after: before};
  }
  await new Promise(r => requestAnimationFrame(r));   // the frame that paints the new data
  return {ms: performance.now() - t0, before: before.slice(0, 200), after: snap().slice(0, 200)};
}"""


def _redraw(page, sel, idx, ctrl, plot=0, trace=0, key="z"):
    "Click control `ctrl` inside the `idx`-th `sel` element; ms until its plot's trace data changed and repainted."
    return page.evaluate(REDRAW_JS, [sel, idx, ctrl, plot, trace, key])


def _browser(p):
    return p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])


def _watch(page, errors):
    def on_console(m):
        if m.type == "error" and not any(b.search(m.text) for b in BENIGN): errors.append(f"console.error: {m.text}")
    page.on("console", on_console)
    page.on("pageerror", lambda e: None if any(b.search(str(e)) for b in BENIGN) else errors.append(f"pageerror: {e}"))


# anywidget 0.11 gives each model 2 s (AbortSignal.timeout(2000)) to load and initialise its JavaScript, then rejects
# the model's `ready` and drops every kernel message to it. Expiring that limit at once for every model makes the
# worst case of a loaded machine certain instead of occasional: plotly's FigureWidget lost every update under it.
EXPIRE_ANYWIDGET_SETUP = ("{ const timeout = AbortSignal.timeout.bind(AbortSignal);"
                          "  AbortSignal.timeout = ms => timeout(ms === 2000 ? 1 : ms); }")


def test_tutorial_runs_in_browser(lab):
    from playwright.sync_api import sync_playwright
    base, token, root = lab
    ART.mkdir(parents=True, exist_ok=True)
    errors = []
    with sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        _watch(page, errors)
        t0 = time.perf_counter()
        _open(page, base, token, TUTORIAL.name)
        _run_all(page)
        # the last cell shows the tabbed dashboard reopened from the exported checkpoint
        _wait_done(page, ".gptq-dashboard .js-plotly-plot", timeout_s=RUN_S)
        page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]', timeout=1000 * RUN_S)
        print(f"\ntutorial opened and run in {time.perf_counter() - t0:.1f} s")
        errs = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
        tracebacks = [t for t in errs.all_inner_texts() if "Traceback" in t or "Error" in t]
        assert not tracebacks, tracebacks[:2]
        assert page.locator(".widget-slider").count() > 0
        n_plots = page.locator(".js-plotly-plot").count()
        assert n_plots >= 8, n_plots
        # live mode finished: the progress bar reached the number of linears
        assert "done" in page.locator(".gptq-live").first.inner_text()
        # the dashboard reopened from the checkpoint: its heat-strip's block axis starts at block 0 (it showed -2, -1)
        x0 = page.evaluate("() => document.querySelector('.gptq-dashboard .gptq-explorer .js-plotly-plot')._fullLayout.xaxis.range[0]")
        assert x0 == -0.5, x0
        # the export button's label is not cut off ("Export checkp…")
        fits = page.evaluate("() => { const b = document.querySelector('.gptq-export-button');"
                             " return [b.scrollWidth, b.clientWidth]; }")
        assert fits[0] <= fits[1], fits
        # 1) explorer: toggle the log scale -> the heat-strip's z changes
        r = _redraw(page, ".gptq-explorer", 1, ".gptq-explorer-log input")
        print(f"explorer log toggle -> strip redrawn in {r['ms']:.0f} ms")
        assert r["ms"] > 0 and r["after"] != r["before"]
        # 2) explorer: pick another layer from the drop-down -> the detail's Hessian-diagonal trace changes
        ex = page.locator(".gptq-explorer").nth(1)
        detail_y = ("([e, b]) => { const g = e.querySelectorAll('.js-plotly-plot')[1];"
                    " return g && g.data && JSON.stringify(g.data[3].y) !== b; }")   # a new plot each pick
        before = page.evaluate("e => JSON.stringify(e.querySelectorAll('.js-plotly-plot')[1].data[3].y)", ex.element_handle())
        opts = ex.locator(".gptq-explorer-layer select option").all_inner_texts()
        t = time.perf_counter()
        ex.locator(".gptq-explorer-layer select").select_option(index=next(i for i, o in enumerate(opts) if "o_proj" in o))
        page.wait_for_function(detail_y, arg=[ex.element_handle(), before], timeout=15_000)
        print(f"explorer layer pick -> detail redrawn in {1000 * (time.perf_counter() - t):.0f} ms (incl. playwright)")
        assert "o_proj" in page.evaluate("e => e.querySelectorAll('.js-plotly-plot')[1].layout.title.text", ex.element_handle())
        print("plotly.js from:", page.evaluate("() => globalThis.__gptqNbPlotlyFrom"))
        # 3) histograms: move the outlier slider with the keyboard -> the outlier trace changes
        h = page.locator(".gptq-hist").first
        t = time.perf_counter()
        before = page.evaluate("e => JSON.stringify(e.querySelector('.js-plotly-plot').data.map(d => d.y))", h.element_handle())
        handle = h.locator(".gptq-hist-k .noUi-handle")
        handle.focus()
        for _ in range(10): page.keyboard.press("ArrowLeft")  # lower the threshold: more outliers
        page.wait_for_function("([e, b]) => JSON.stringify(e.querySelector('.js-plotly-plot').data.map(d => d.y)) !== b",
                               arg=[h.element_handle(), before], timeout=15_000)
        print(f"histogram slider -> redrawn in {1000 * (time.perf_counter() - t):.0f} ms (keyboard, incl. playwright)")
        # 4) size panel: bytes -> bits per weight
        r = _redraw(page, ".gptq-size", 0, ".gptq-size-view button:nth-child(2)", trace=1, key="y")
        print(f"size view toggle -> redrawn in {r['ms']:.0f} ms")
        assert r["ms"] > 0
        page.wait_for_timeout(500)
        for name, sel_, i in (("live", ".gptq-live", 0), ("explorer", ".gptq-explorer", 1), ("scales", ".gptq-hist", 0),
                              ("size", ".gptq-size", 0), ("whatif", ".gptq-whatif", 0), ("export", ".gptq-export", 0),
                              ("dashboard", ".gptq-dashboard", 0)):
            page.locator(sel_).nth(i).screenshot(path=str(ART / f"{name}.png"))
        browser.close()
    assert not errors, "\n".join(errors[:10])


BENCH_NB = {"cells": [
    {"cell_type": "code", "execution_count": None, "id": "b0", "metadata": {}, "outputs": [], "source": [
        "from gptq_nb.dashboard import synthetic_report, layer_explorer, scale_histograms\n",
        "rep = synthetic_report(n_blocks=30)\n",
        "ex = layer_explorer(rep); ex"]},
    {"cell_type": "code", "execution_count": None, "id": "b1", "metadata": {}, "outputs": [],
     "source": ["sh = scale_histograms(rep, by='block'); sh"]},
    {"cell_type": "code", "execution_count": None, "id": "b2", "metadata": {}, "outputs": [],
     "source": ["ex_static = layer_explorer(rep, static=True)  # the Colab fallback: plain figures, same controls\n",
                "ex_static"]}],
    "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
    "nbformat": 4, "nbformat_minor": 5}


def test_30_block_redraw_under_1s(lab):
    from playwright.sync_api import sync_playwright
    base, token, root = lab
    (root / "bench30.ipynb").write_text(json.dumps(BENCH_NB))
    errors, times = [], {}
    with sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        _watch(page, errors)
        page.add_init_script(EXPIRE_ANYWIDGET_SETUP)
        _open(page, base, token, "bench30.ipynb")
        page.evaluate("() => { delete window._JUPYTERLAB['jupyterlab-plotly']; }")   # views: plotly.js from the kernel
        _run_all(page)
        _wait_done(page, ".gptq-hist .js-plotly-plot")
        page.wait_for_function("() => document.querySelectorAll('.gptq-explorer').length == 2 && "
                               "document.querySelectorAll('.gptq-explorer')[1].querySelector('.js-plotly-plot')", timeout=120_000)
        page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]', timeout=180_000)
        page.wait_for_timeout(300)
        for i in range(3):  # log on/off/on: the whole 7 × 30 strip each time
            times[f"strip log toggle #{i + 1}"] = _redraw(page, ".gptq-explorer", 0, ".gptq-explorer-log input")["ms"]
        times["strip metric -> loss ratio"] = page.evaluate("""async () => {
            const root = document.querySelector('.gptq-explorer');  /* each redraw draws a new plot: re-query it */
            const z = () => { const gd = root.querySelector('.js-plotly-plot'); return gd && gd.data ? JSON.stringify(gd.data[0].z) : null; };
            const before = z(); const s = root.querySelector('.gptq-explorer-metric select');
            const t0 = performance.now(); s.selectedIndex = 2;  /* GPTQ loss / RTN loss */ s.dispatchEvent(new Event('change', {bubbles: true}));
            while (z() === before || z() === null) { await new Promise(r => requestAnimationFrame(r));
                if (performance.now() - t0 > 15000) return -1; }
            await new Promise(r => requestAnimationFrame(r)); return performance.now() - t0; }""")
        times["detail: next layer"] = page.evaluate("""async () => {
            const root = document.querySelector('.gptq-explorer');  /* each pick draws a new detail plot: re-query it */
            const z = () => { const gd = root.querySelectorAll('.js-plotly-plot')[1]; return gd && gd.data ? JSON.stringify(gd.data[0].z) : null; };
            const before = z(); const s = root.querySelector('.gptq-explorer-layer select');
            const t0 = performance.now(); s.selectedIndex = 100; s.dispatchEvent(new Event('change', {bubbles: true}));
            while (z() === before || z() === null) { await new Promise(r => requestAnimationFrame(r));
                if (performance.now() - t0 > 15000) return -1; }
            await new Promise(r => requestAnimationFrame(r)); return performance.now() - t0; }""")
        # clicking a heat-strip cell selects that layer (plotly click -> view -> kernel -> drop-down)
        xy = page.evaluate("""() => {
            const gd = document.querySelector('.gptq-explorer .js-plotly-plot'), r = gd.getBoundingClientRect();
            const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
            return [r.left + xa._offset + xa.l2p(17), r.top + ya._offset + ya.l2p(6)]; }""")  # block 17, down_proj
        t = time.perf_counter()
        page.mouse.click(*xy)
        page.wait_for_function("() => document.querySelector('.gptq-explorer .gptq-explorer-layer select').value"
                               " === 'model.layers.17.mlp.down_proj'", timeout=15_000)
        times["click a cell -> layer selected"] = 1000 * (time.perf_counter() - t)
        times["static explorer log toggle"] = _redraw(page, ".gptq-explorer", 1, ".gptq-explorer-log input")["ms"]
        times["histogram per layer"] = _redraw(page, ".gptq-hist", 0, ".gptq-hist-by button:nth-child(1)", key="y")["ms"]
        page.locator(".gptq-explorer").first.screenshot(path=str(ART / "explorer_30_blocks.png"))
        source = page.evaluate("() => globalThis.__gptqNbPlotlyFrom")
        browser.close()
    for k, v in times.items(): print(f"30-block redraw, {k}: {v:.0f} ms")
    assert source == "kernel", source
    assert not errors, "\n".join(errors[:10])
    # in-place redraws (the dashboards' normal mode) must stay under 1 s; the static fallback re-renders a whole
    # figure each time, so it gets 2 s
    assert all(0 < v < (2000 if "static" in k else 1000) for k, v in times.items()), times
