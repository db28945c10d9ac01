"""Summary table, baselines, reasons and the `phaze report` CLI on synthetic tables."""

import json

import numpy as np
import pandas as pd
import pytest

from phaze.cli import main
from phaze.report.summary import summarise
from phaze.report.tables import load_grid, load_place
from phaze.search.baselines import spotlight_pick, spotlight_scores, tpuv4_arch_id
from report_synth import make_grid, make_place


@pytest.fixture
def files(tmp_path):
    grid = make_grid()
    grid.to_parquet(tmp_path / "grid.parquet")
    paths = []
    for i, (m, s) in enumerate([("bert-large", 512), ("gpt2-xl", 1024)]):
        p = tmp_path / f"{m}_s{s}.parquet"
        make_place(grid, m, s, seed=i).to_parquet(p)
        paths.append(p)
    return tmp_path, grid, paths


def brute_summary_row(place, grid, model, seq):
    """Independent restatement: best design = max samples/s over optimised rows (ties:
    smaller area then id); TPUv4 baselines = best rows of its arch."""
    rows = place[(place.model == model) & (place.seq == seq)].merge(grid[["arch_id", "area_mm2"]])
    opt = rows[(rows.strategy == "optimised") & rows.samples_per_s.notna()]
    best = sorted(opt.itertuples(), key=lambda r: (-r.samples_per_s, r.area_mm2, r.arch_id))[0]
    tpu = grid[(grid.n_tc == 8) & (grid.tc_rows == 128) & (grid.n_vc == 2)
               & (grid.glb_bytes == 128 * 1024**2)].arch_id.iloc[0]
    fits = rows.memory_per_device_bytes <= 32 * 1024**3   # a TPUv4's HBM
    t_opt = opt[(opt.arch_id == tpu) & fits.loc[opt.index]].samples_per_s.max()
    fx = rows[(rows.strategy == "fixed") & (rows.arch_id == tpu) & fits].samples_per_s.max()
    lat = opt.assign(per=opt.single_chip_latency_s / opt.mbs).groupby("arch_id").per.min()
    spot = lat.idxmin()
    s_thr = opt[opt.arch_id == spot].samples_per_s.max()
    return best, t_opt, fx, spot, s_thr


def test_summary_matches_brute_force(files):
    tmp, grid, paths = files
    place = load_place(paths)
    summ = summarise(place, load_grid(tmp / "grid.parquet"))
    assert list(zip(summ.model, summ.seq)) == [("bert-large", 512), ("gpt2-xl", 1024)]
    assert "n_archs" not in summ.columns      # evaluated and grid counts named apart
    pruned = place[place.arch_id != grid.arch_id.iloc[-1]]      # one arch never placed
    s = summarise(pruned, load_grid(tmp / "grid.parquet")).iloc[0]
    assert (s.n_archs_evaluated, s.n_archs_grid) == (len(grid) - 1, len(grid))
    for _, r in summ.iterrows():
        best, t_opt, fx, spot, s_thr = brute_summary_row(place, grid, r.model, r.seq)
        assert r.status == "ok" and r.best_arch_id == best.arch_id
        assert r.best_samples_per_s == best.samples_per_s
        assert r.tpuv4_opt_samples_per_s == t_opt and r.tpuv4_fixed_samples_per_s == fx
        assert r.speedup_vs_tpuv4_opt == pytest.approx(best.samples_per_s / t_opt)
        assert r.speedup_vs_tpuv4_fixed == pytest.approx(best.samples_per_s / fx)
        assert r.spotlight_arch_id == spot
        assert r.speedup_vs_spotlight == pytest.approx(best.samples_per_s / s_thr)
        assert r.tpuv4_fixed_strategy == "8x128x1"


def test_says_why_when_tpuv4_is_the_best(files):
    tmp, grid, _ = files
    place = make_place(grid, "bert-large", 512)
    tpu = tpuv4_arch_id(grid)
    place.loc[place.arch_id == tpu, "samples_per_s"] *= 100
    s = summarise(load_place_df(place), grid, tpuv4_hbm_gib=64).iloc[0]
    assert s.best_arch_id == tpu and s.speedup_vs_tpuv4_opt == 1.0
    assert "TPUv4-like chip is itself the best design" in s.notes
    assert "grid holds no faster chip within the area budget" in s.notes


def test_says_why_when_tpuv4_is_outside_the_grid():
    grid = make_grid().iloc[1:]  # drop the TPUv4-like chip
    s = summarise(load_place_df(make_place(grid)), grid).iloc[0]
    assert s.status == "ok" and np.isnan(s.speedup_vs_tpuv4_opt)
    assert "TPUv4-like chip is outside the grid" in s.notes


def load_place_df(df, tmp=None):
    import tempfile
    from pathlib import Path

    d = Path(tempfile.mkdtemp())
    p = d / f"{df.model.iloc[0]}_s{df.seq.iloc[0]}.parquet"
    df.to_parquet(p)
    return load_place([p])


def test_infeasible_sweep_is_reported_everywhere(tmp_path, capsys):
    grid = make_grid()
    grid.to_parquet(tmp_path / "grid.parquet")
    make_place(grid, "llama2-7b", 4096, feasible=False).to_parquet(tmp_path / "llama2-7b_s4096.parquet")
    make_place(grid, "bert-large", 512).to_parquet(tmp_path / "bert-large_s512.parquet")
    args = ["report", "--place", str(tmp_path / "llama2-7b_s4096.parquet"),
            str(tmp_path / "bert-large_s512.parquet"), "--grid", str(tmp_path / "grid.parquet")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "llama2-7b" in out and "INFEASIBLE" in out
    assert "out of memory at every mbs/recompute/HBM" in out
    assert main(args + ["-o", str(tmp_path / "rep")]) == 0
    csv = pd.read_csv(tmp_path / "rep" / "summary.csv")
    row = csv[csv.model == "llama2-7b"].iloc[0]
    assert row.status == "infeasible" and "out of memory" in row.notes
    assert "32,64 GiB" in row.notes and "recompute full,none" in row.notes
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "llama2-7b, seq 4096: no feasible design" in html
    assert csv[csv.model == "bert-large"].status.iloc[0] == "ok"
    # "Run it": the command that recomputes the row is the summary's evaluate_command
    # (--grid G --arch ID); the chip JSON is not offered as a reproduction
    import html as _html

    run_it = html.split('id="runnable"', 1)[1]
    cmd = csv[csv.model == "bert-large"].evaluate_command.iloc[0]
    assert "--grid" in cmd and _html.escape(cmd) in run_it
    assert "It does not reproduce this row" in run_it and f"evaluate --arch {tmp_path}" not in run_it


def test_infeasible_fix_names_only_what_was_not_tried():
    """The fix of an infeasible note suggests recomputation or microbatch size 1 only when
    the sweep did not try them, and names the config fields."""
    grid = make_grid()
    place = make_place(grid, "llama2-7b", 4096, feasible=False)
    tried = summarise(load_place_df(place), grid).iloc[0].notes
    assert f"on all {len(grid)} archs" in tried
    fix = tried.split("fix:")[1]
    assert "recomputation" not in fix and "microbatch" not in fix
    assert "larger HBM (placement.hbm_gib)" in fix and "placement.devices" in fix
    fewer = place[(place.recompute == "none") & (place.mbs == 2)]
    fix = summarise(load_place_df(fewer), grid, config={"models": [
        {"name": "llama2-7b", "tp": [1, 2]}]}).iloc[0].notes.split("fix:")[1]
    assert "full recomputation (add full to placement.recompute)" in fix
    assert "microbatch size 1 (add 1 to microbatch_sizes)" in fix
    assert "tensor parallelism wider than 2 (models[0].tp)" in fix


def test_tables_carry_their_identity(tmp_path, capsys):
    """Identities come from columns: a table without its model column, or an empty one, is
    refused in one line naming the file (never guessed from the file name)."""
    grid = make_grid()
    grid.to_parquet(tmp_path / "grid.parquet")
    make_place(grid).drop(columns=["model"]).to_parquet(tmp_path / "bert-large_s512.parquet")
    make_place(grid).iloc[0:0].to_parquet(tmp_path / "opt-350m_s2048.parquet")
    for name, why in (("bert-large_s512", "missing column 'model'"),
                      ("opt-350m_s2048", "holds no rows")):
        assert main(["report", "--place", str(tmp_path / f"{name}.parquet"),
                     "--grid", str(tmp_path / "grid.parquet")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and why in err[0] and name in err[0]


def test_missing_file_is_a_user_error(tmp_path, capsys):
    assert main(["report", "--place", str(tmp_path / "x_s1.parquet"), "--grid", "g"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--place" in err[0]


def test_spotlight_from_latency_table_brute_force():
    rng = np.random.default_rng(3)
    rows = []
    for a in ("a", "b", "c"):
        for mbs in (1, 2, 4):
            for tp in (1, 2):
                for layer, rep in ((0, 1), (1, 24), (2, 1)):
                    rows.append(dict(arch_id=a, mbs=mbs, tp=tp, layer_index=layer, repeat=rep,
                                     fwd_s=rng.random(), bwd_s=rng.random()))
    lat = pd.DataFrame(rows)
    got = spotlight_scores(lat)
    for a in ("a", "b", "c"):
        want = min(sum((r.fwd_s + r.bwd_s) * r.repeat for r in lat.itertuples()
                       if r.arch_id == a and r.mbs == m and r.tp == 1) / m for m in (1, 2, 4))
        assert got[a] == pytest.approx(want)
    assert spotlight_pick(got) == got.idxmin()


def test_latency_tables_give_the_spotlight_pick(tmp_path, capsys):
    """--latency tables (merge-latency's schema): the block's time counts once per block
    instance (its layer_repeat, 24 for bert-large)."""
    from report_synth import latency_frame

    grid = make_grid()
    grid.to_parquet(tmp_path / "grid.parquet")
    place = make_place(grid).drop(columns=["single_chip_latency_s"])
    place.to_parquet(tmp_path / "bert-large_s512.parquet")
    ids = list(grid.arch_id)
    rows = []
    for k, a in enumerate(ids):
        # arch 0: slow block, fast prologue/epilogue; arch 1: the reverse (wins only if
        # the block is counted 24 times); others slow everywhere
        blk, edge = {0: (1.0, 0.0), 1: (1.05 / 24, 0.5)}.get(k, (5.0, 5.0))
        for li, t, rep in ((0, edge, 1), (1, blk, 24), (2, edge, 1)):
            rows.append(dict(arch_id=a, layer_index=li, layer_repeat=rep, fwd_s=t / 3,
                             bwd_s=2 * t / 3))
    latency_frame(rows, "bert-large", 512, 1).to_parquet(tmp_path / "lat.parquet")
    assert main(["report", "--place", str(tmp_path / "bert-large_s512.parquet"), "--grid",
                 str(tmp_path / "grid.parquet"), "--latency", str(tmp_path / "lat.parquet"),
                 "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["summary"][0]
    # per-sample latency: arch 0 = 24 * 1.0 + 0 = 24; arch 1 = 24 * 1.05/24 + 2 * 0.5 = 2.05
    assert row["spotlight_arch_id"] == ids[1]
    # tables of a sweep without tp 1 hold no single chip's times: the note says what to add
    # (a new user read "pass --latency" when the tables had been passed)
    latency_frame(rows, "bert-large", 512, 1, tp=2).to_parquet(tmp_path / "lat.parquet")
    assert main(["report", "--place", str(tmp_path / "bert-large_s512.parquet"), "--grid",
                 str(tmp_path / "grid.parquet"), "--latency", str(tmp_path / "lat.parquet"),
                 "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["summary"][0]
    assert row["spotlight_arch_id"] is None
    assert "timed no layer on a single chip" in row["notes"] and "pass --latency" not in row["notes"]


def test_fixed_plan_only_where_configured():
    """No published fallback: a model whose config has no fixed_plan has no fixed baseline,
    even when the tables hold fixed rows."""
    grid = make_grid()
    s = summarise(load_place_df(make_place(grid)), grid, fixed_plans={}).iloc[0]
    assert not isinstance(s.tpuv4_fixed_strategy, str) and np.isnan(s.speedup_vs_tpuv4_fixed)
    assert "no fixed plan configured" in s.notes
    s = summarise(load_place_df(make_place(grid)), grid,
                  fixed_plans={"bert-large": "8x128x1"}).iloc[0]
    assert s.tpuv4_fixed_strategy == "8x128x1" and s.speedup_vs_tpuv4_fixed > 0


def test_report_results_folder_equals_explicit_flags(files, capsys, tmp_path):
    """`phaze report --results DIR` reads a workflow's folder (the config's (model, seq)
    pairs only: a stale table of another model is left out) and reports what the
    explicit flags report; a folder without config.yaml is one line, exit 2."""
    import yaml

    d, grid, paths = files
    res = tmp_path / "results"
    (res / "place").mkdir(parents=True)
    (res / "arch").mkdir()
    grid.to_parquet(res / "arch" / "grid.parquet")
    for p in paths:
        (res / "place" / p.name).write_bytes(p.read_bytes())
    make_place(grid, "opt-350m", 2048, seed=9).to_parquet(res / "place" / "opt-350m_s2048.parquet")
    cfg = {"models": [{"name": "bert-large", "seq": [512]}, {"name": "gpt2-xl", "seq": [1024]}],
           "microbatch_sizes": [1], "search": {"method": "exhaustive"}}
    (res / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["report", "--results", str(res), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)["summary"]
    assert main(["report", "--place", *map(str, paths), "--grid", str(res / "arch/grid.parquet"),
                 "--config", str(res / "config.yaml"), "--json"]) == 0
    want = json.loads(capsys.readouterr().out)["summary"]
    assert got == want and {r["model"] for r in got} == {"bert-large", "gpt2-xl"}
    assert main(["report", "--results", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--results" in err[0]


def test_every_plot_draws_the_rows_the_summary_names(files, tmp_path):
    """The figures mark the summary's rows: the TPUv4-like chip's plan within its own HBM
    (the synthetic table's faster 64 GiB rows of that chip must not be drawn), the fixed
    plan, the Spotlight-style pick and the winner; checked against the summary's columns."""
    from phaze.report import plots

    tmp, grid, paths = files
    place = load_place(paths).merge(grid[["arch_id", "area_mm2"]], on="arch_id")
    summ = summarise(place, grid)
    cols = {"co-design": ("best_arch_id", "best_samples_per_s"),
            "TPUv4-like": ("tpuv4_arch_id", "tpuv4_opt_samples_per_s"),
            "TPUv4-like fixed": ("tpuv4_arch_id", "tpuv4_fixed_samples_per_s"),
            "Spotlight-style": ("spotlight_arch_id", "speedup_vs_spotlight")}
    tpu = tpuv4_arch_id(grid)
    faster_elsewhere = place[(place.arch_id == tpu) & (place.strategy == "optimised")]
    assert faster_elsewhere.samples_per_s.max() > summ.tpuv4_opt_samples_per_s.max()
    for name, draw, roles in [
            ("pareto", lambda p: plots.pareto_plot(place, summ, p), {"co-design", "TPUv4-like"}),
            ("per_area", lambda p: plots.pareto_plot(place, summ, p, per_area=True),
             {"co-design", "TPUv4-like"}),
            ("breakdown", lambda p: plots.breakdown_plot(place, summ, p), set(cols)),
            ("memory", lambda p: plots.memory_plot(place, summ, p), set(cols))]:
        made = draw(tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
        drawn = {(m, q, role): r for m, q, role, r in made.rows}
        for _, s in summ.iterrows():
            want = {role for role in roles if pd.notna(s[cols[role][1]])}
            assert {role for m, q, role in drawn if (m, q) == (s.model, s.seq)} == want, name
            for role in want:
                r, (aid, thr) = drawn[(s.model, s.seq, role)], cols[role]
                assert r["arch_id"] == s[aid], (name, role)
                if role == "Spotlight-style":
                    assert s.best_samples_per_s / r["samples_per_s"] == s[thr]
                else:
                    assert r["samples_per_s"] == s[thr], (name, role)
                if role.startswith("TPUv4"):
                    assert r["memory_per_device_bytes"] <= s.tpuv4_hbm_bytes


def test_fixed_plan_note_names_the_cause_that_holds():
    """gpt2-xl has 48 blocks: p = 32 cannot split them (the default sweep's case); p = 8
    can, and then memory is the cause; t outside the config's tp widths is named."""
    from phaze.model.zoo import get_model

    grid = make_grid()
    assert get_model("gpt2-xl").layers % 32 != 0 and get_model("gpt2-xl").layers % 8 == 0
    place = make_place(grid, "gpt2-xl", 1024, tpu_fixed=(8, 128, 1))
    fixed = place.row_kind == "fixed"
    place.loc[fixed, "memory_per_device_bytes"] = 40 * 2**30      # > 32 GiB everywhere
    cfg = {"models": [{"name": "gpt2-xl", "tp": [1]}], "microbatch_sizes": [1, 2],
           "placement": {"global_batch": 4096}}
    notes = {}
    for pdt in ("32x32x1", "8x128x1", "8x128x2"):
        s = summarise(load_place_df(place), grid, fixed_plans={"gpt2-xl": pdt},
                      config=cfg).iloc[0]
        assert np.isnan(s.tpuv4_fixed_samples_per_s)
        notes[pdt] = s.notes
    assert "p = 32 does not divide gpt2-xl's 48 transformer blocks" in notes["32x32x1"]
    assert "does not fit in 32 GiB" in notes["8x128x1"] and "40.00 GiB" in notes["8x128x1"]
    assert "t = 2 is not among the config's tp widths [1]" in notes["8x128x2"]
    assert all(" or " not in n.split("gives no plan")[1].split(";")[0] for n in notes.values())


def test_a_plan_too_big_for_every_swept_hbm_but_not_for_the_tpuv4_chip_says_so():
    """hbm_gib [0.25]: the fixed plan needs 0.37 GiB, so no row is feasible; it would fit
    in the TPUv4-like chip's 32 GiB, which the sweep did not try. The note says that (it
    used to say the plan 'does not fit in 32 GiB' although it needs 0.37 GiB)."""
    grid = make_grid()
    place = make_place(grid, "bert-large", 512)
    place = place[place.hbm_bytes == 32 * 2**30].assign(hbm_bytes=0.25 * 2**30)
    fixed = place.row_kind == "fixed"
    place.loc[fixed, ["samples_per_s", "tokens_per_s", "time_per_batch_s"]] = np.nan
    place.loc[fixed, "feasible"] = False
    place.loc[fixed, "memory_per_device_bytes"] = 0.37 * 2**30
    s = summarise(load_place_df(place), grid, fixed_plans={"bert-large": "8x128x1"}).iloc[0]
    assert np.isnan(s.tpuv4_fixed_samples_per_s)
    assert "does not fit in 32 GiB" not in s.notes
    assert ("needs 0.37 GiB per device, more than every swept HBM size (0.25 GiB) but within "
            "the chip's 32 GiB, which the sweep did not try; fix: add 32 to placement.hbm_gib"
            in s.notes), s.notes
    assert "32 GiB of HBM is not among the swept sizes (0.25 GiB)" in s.notes


def test_summary_rows_record_how_they_were_obtained(tmp_path):
    """summary.csv's provenance columns are what the tables say: the placement rows'
    phaze versions and methods, the latency rows' solvers, ILP statuses and worst gap (a
    time-limit ILP counted apart from the optimal ones)."""
    from report_synth import latency_frame

    grid = make_grid()
    raw = make_place(grid)
    raw["phaze_version"] = "9.9.9"
    raw.to_parquet(tmp_path / "p.parquet")
    place = load_place([tmp_path / "p.parquet"])
    rows = [dict(arch_id=a, layer_index=k, layer_repeat=1, fwd_s=1e-3, bwd_s=2e-3)
            for a in grid["arch_id"] for k in range(3)]
    lat = latency_frame(rows, "bert-large", 512, 1)
    lat.loc[0, "fwd_status"], lat.loc[0, "fwd_gap"], lat.loc[0, "solver"] = "time_limit", 0.03, "cbc"
    s = summarise(place, grid, lat).iloc[0]
    assert s["phaze_version"] == "9.9.9" and s["solvers"] == "cbc,synthetic"
    assert s["placement_method"] == ",".join(sorted(set(place["method"])))
    assert (s["ilps"], s["ilps_optimal"]) == (3 * len(lat), 3 * len(lat) - 1)
    assert s["worst_ilp_gap"] == pytest.approx(0.03)
    bare = summarise(place, grid).iloc[0]        # no latency tables: unknown, not made up
    assert bare["solvers"] == "" and np.isnan(bare["ilps"]) and bare["phaze_version"] == "9.9.9"


def test_sensitivity_tells_a_pruned_neighbour_from_one_no_plan_fits(tmp_path):
    """A neighbour chip with no placement rows (the pruned search never placed it) is
    'pruned', not 'no plan fits'; one whose rows are all infeasible is 'no plan'."""
    from phaze.report.sensitivity import sensitivity

    # one-step neighbours (n_tc, n_vc, buffer) of the synthetic grid's winner, 16 x 128^2
    near = [(8, 128, 128, 2, 128, 16), (32, 128, 128, 2, 128, 16), (16, 128, 128, 1, 128, 16),
            (16, 128, 128, 4, 128, 16), (16, 128, 128, 2, 128, 8), (16, 128, 128, 2, 128, 32)]
    grid = make_grid(extra=near)
    raw = make_place(grid)
    centre = grid[(grid["n_tc"] == 16) & (grid["tc_rows"] == 128) & (grid["n_vc"] == 2)
                  & (grid["glb_bytes"] == 16 * 2**20)]["arch_id"].iloc[0]
    raw.loc[raw["arch_id"] == centre, "samples_per_s"] *= 100     # the winner
    raw.to_parquet(tmp_path / "p.parquet")
    place = load_place([tmp_path / "p.parquet"])
    s = summarise(place, grid).iloc[0]
    before = sensitivity(place, grid, s, None)
    ok = [(r, side) for r in before["rows"] for side in ("down", "up")
          if r[side]["status"] == "ok"]
    assert len(ok) >= 2
    (r1, s1), (r2, s2) = ok[:2]
    gone, full = r1[s1]["arch_id"], r2[s2]["arch_id"]
    assert gone != full != s["best_arch_id"]
    cut = place[place["arch_id"] != gone].copy()            # never placed
    cut.loc[cut["arch_id"] == full, "samples_per_s"] = np.nan   # placed, nothing fits
    after = {(r["axis"], side): r[side] for r in sensitivity(cut, grid, s, None)["rows"]
             for side in ("down", "up")}
    assert after[(r1["axis"], s1)]["status"] == "pruned"
    assert after[(r2["axis"], s2)]["status"] == "no plan"


def test_chip_labels_name_the_axes_the_grid_varies():
    """A grid sweeping HBM bandwidth (or clock) labels its chips with it: two chips that
    differ only there get different labels; a grid with one value leaves it out."""
    from phaze.report.summary import arch_label

    grid = make_grid()
    row = grid.iloc[0].to_dict()
    assert "HBM" not in arch_label(row, grid) and "GHz" not in arch_label(row, grid)
    two = pd.concat([grid, grid.iloc[[0]].assign(hbm_bw_Bps=2.4e12, clock_hz=1.4e9)])
    a, b = arch_label(two.iloc[0].to_dict(), two), arch_label(two.iloc[-1].to_dict(), two)
    assert a != b and "HBM 1.2 TB/s" in a and "HBM 2.4 TB/s" in b and "1.4 GHz" in b
