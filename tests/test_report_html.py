"""report.html renders in headless Chromium: non-blank screenshot, summary table and
plot images in the DOM (Debian's chromium, installed by scripts/install-chromium.sh)."""

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from phaze.cli import main
from report_synth import make_grid, make_place

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"


def chromium() -> str:
    if not os.path.exists(CHROMIUM):
        if os.geteuid() != 0:
            pytest.skip("chromium missing and installing it needs root")
        subprocess.run([str(ROOT / "scripts" / "install-chromium.sh")], check=True, timeout=900)
    return CHROMIUM


def _run_chromium(args, tmp_path):
    env = dict(os.environ, HOME=str(tmp_path))  # chromium writes a profile under HOME
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("rep")
    grid = make_grid()
    grid.to_parquet(d / "grid.parquet")
    places = []
    for i, (m, s) in enumerate([("bert-large", 512), ("gpt2-xl", 1024)]):
        make_place(grid, m, s, seed=i).to_parquet(d / f"{m}_s{s}.parquet")
        places.append(str(d / f"{m}_s{s}.parquet"))
    make_place(grid, "llama2-7b", 4096, feasible=False).to_parquet(d / "llama2-7b_s4096.parquet")
    places.append(str(d / "llama2-7b_s4096.parquet"))
    assert main(["report", "--place", *places, "--grid", str(d / "grid.parquet"),
                 "-o", str(d / "out")]) == 0
    return d / "out"


def test_report_files(report_dir):
    for name in ("summary.csv", "pareto.png", "throughput_per_area.png", "breakdown.png",
                 "memory.png", "report.html"):
        assert (report_dir / name).stat().st_size > 0, name
    html = (report_dir / "report.html").read_text()
    assert "src=\"http" not in html and "<script" not in html  # self-contained


def test_html_renders_in_headless_chromium(report_dir, tmp_path):
    url = (report_dir / "report.html").as_uri()
    shot = tmp_path / "shot.png"
    r = _run_chromium([f"--screenshot={shot}", "--window-size=1400,2400",
                       "--hide-scrollbars", url], tmp_path)
    assert shot.exists(), r.stderr[-2000:]
    import matplotlib.image as mpimg

    img = mpimg.imread(shot)
    assert img.shape[0] == 2400 and img.shape[1] == 1400
    rgb = img[..., :3]
    # non-blank: a real page has many distinct colours and plenty of non-white pixels
    assert (rgb.reshape(-1, 3).std(axis=0) > 0.05).all()
    assert (rgb.min(axis=2) < 0.9).mean() > 0.05
    assert len(np.unique((rgb * 255).astype(int).reshape(-1, 3), axis=0)) > 50
    keep = os.environ.get("PHAZE_KEEP_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)

    dom = _run_chromium(["--dump-dom", url], tmp_path).stdout
    assert '<table id="summary">' in dom
    assert dom.count("<tr>") + dom.count('<tr class="infeasible">') >= 4  # header + 3 rows
    for ident in ("pareto", "per_area", "breakdown", "memory"):
        assert f'<img id="{ident}"' in dom and 'src="data:image/png;base64,' in dom
    assert "llama2-7b, seq 4096: no feasible design" in dom


def test_report_on_real_placement_tables(tmp_path):
    """Placement tables written by the real `phaze place` (synthetic chains per arch),
    then the report: it reads place's schema (row_kind, feasible, breakdown columns)."""
    import json

    import pandas as pd

    from report_synth import place_work_items

    grid = make_grid()
    grid.to_parquet(tmp_path / "grid.parquet")
    places = []
    for name, seq, hbm in (("bert-large", 512, (32, 80)), ("llama2-7b", 4096, (0.001,))):
        items = place_work_items(grid, name, seq, hbm_gib=hbm, recompute=("full",))
        (tmp_path / f"{name}.json").write_text(json.dumps(items))
        out = tmp_path / f"{name}_s{seq}.parquet"
        assert main(["place", "--work-items", str(tmp_path / f"{name}.json"), "--devices", "1024",
                     "--batch", "4096", "--optimizer", "sgd", "--fixed", "8x128x1",
                     "-o", str(out)]) == 0
        places.append(str(out))
    assert main(["report", "--place", *places, "--grid", str(tmp_path / "grid.parquet"),
                 "-o", str(tmp_path / "rep")]) == 0
    s = pd.read_csv(tmp_path / "rep" / "summary.csv").set_index("model")
    raw = pd.read_parquet(places[0])
    best = raw[(raw.row_kind == "best") & raw.feasible].sort_values("samples_per_s").iloc[-1]
    assert s.loc["bert-large", "status"] == "ok"
    assert s.loc["bert-large", "best_samples_per_s"] == pytest.approx(best.samples_per_s)
    fixed_tpu = raw[(raw.row_kind == "fixed") & raw.feasible
                    & (raw.arch_id == s.loc["bert-large", "tpuv4_arch_id"])]
    if len(fixed_tpu):
        assert s.loc["bert-large", "speedup_vs_tpuv4_fixed"] == pytest.approx(
            best.samples_per_s / fixed_tpu.samples_per_s.max())
    assert s.loc["llama2-7b", "status"] == "infeasible"
    assert "out of memory at every mbs/recompute/HBM" in s.loc["llama2-7b", "notes"]
    shot = tmp_path / "shot.png"
    _run_chromium([f"--screenshot={shot}", "--window-size=1400,2000", "--hide-scrollbars",
                   (tmp_path / "rep" / "report.html").as_uri()], tmp_path)
    assert shot.exists()
    keep = os.environ.get("PHAZE_KEEP_SCREENSHOT_REAL")
    if keep:
        shutil.copy(shot, keep)


PROBE = """<script>
const w = window.innerWidth, cells = [...document.querySelectorAll('#summary td')];
const over = cells.filter(c => c.getBoundingClientRect().right > w + 0.5).length;
const note = Math.min(...cells.filter(c => c.textContent.includes('32x32x1'))
                            .map(c => c.getBoundingClientRect().width));
const tab = document.querySelector('#summary').getBoundingClientRect().width;
document.body.setAttribute('data-probe',
  `over=${over} scroll=${document.documentElement.scrollWidth} w=${w} note=${Math.round(note)} table=${Math.round(tab)}`);
</script>"""


def test_long_notes_wrap_within_the_page(report_dir, tmp_path):
    """At 1400 px the summary table, long notes included, lies within the page and each
    note is readable (the notes column was squeezed to 91 px and clipped; notes now sit in a full-width row under each
    design). The report has no scripts: the page gets a probe that measures every summary
    cell's right edge as laid out."""
    import pandas as pd

    from phaze.report.html import render

    long_note = "the fixed plan p x d x t = 32x32x1 gives no plan on the TPUv4-like chip " * 3
    summary = pd.read_csv(report_dir / "summary.csv")
    summary["notes"] = summary["notes"].fillna("").astype(object)
    summary.loc[summary["status"] == "ok", "notes"] = long_note.strip()
    html = render(summary, {})
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("</body>", PROBE + "</body>"))
    dom = _run_chromium(["--window-size=1400,2400", "--dump-dom", probe.as_uri()], tmp_path).stdout
    got = dom.split('data-probe="', 1)[1].split('"', 1)[0]
    over, scroll, w, note, tab = (int(x.split("=")[1]) for x in got.split())
    assert long_note.strip() in dom and over == 0 and scroll <= w, got
    assert note >= 0.9 * tab, got      # the note spans the table (a 91 px column before)


def test_rerun_with_fewer_models_removes_only_its_own_stale_files(tmp_path, capsys):
    """A second report into the same folder with one model fewer removes the first run's
    per-model files of the dropped model (megatron_*, nemo_*, chip_*), keeps this run's and
    every file that is not one of the report's own outputs, and says what it removed."""
    grid = make_grid()
    grid.to_parquet(tmp_path / "grid.parquet")
    places = {}
    for i, (m, s) in enumerate([("bert-large", 512), ("gpt2-xl", 1024)]):
        make_place(grid, m, s, seed=i).to_parquet(tmp_path / f"{m}_s{s}.parquet")
        places[m] = str(tmp_path / f"{m}_s{s}.parquet")
    out = tmp_path / "out"
    base = ["report", "--grid", str(tmp_path / "grid.parquet"), "-o", str(out)]
    assert main(base + ["--place", *places.values()]) == 0
    stale = {"megatron_gpt2-xl_s1024.txt", "nemo_gpt2-xl_s1024.yaml", "chip_gpt2-xl_s1024.json"}
    assert stale <= {f.name for f in out.iterdir()}
    foreign = ["notes.txt", "chip_custom.json", "megatron_gpt2-xl_s1024.txt.bak",
               "my_chip_gpt2-xl_s1024.json"]
    for name in foreign:
        (out / name).write_text("mine\n")
    capsys.readouterr()
    assert main(base + ["--place", places["bert-large"]]) == 0
    printed = capsys.readouterr().out
    names = {f.name for f in out.iterdir()}
    assert not stale & names, names
    assert {"megatron_bert-large_s512.txt", "nemo_bert-large_s512.yaml",
            "chip_bert-large_s512.json", "report.html", *foreign} <= names
    assert all(f"removed stale {out / n}" in printed for n in stale), printed
    assert "gpt2-xl" not in (out / "report.html").read_text()
