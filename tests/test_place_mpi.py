"""MPI driver: 1, 2 and 3 ranks (a real mpiexec) give the serial run's table; the static
split against a brute-force optimum; the columnar table against rows built one by one;
serial fallback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from phaze.cli import main
from phaze.place.plan import evaluate_plan, Links, PlanOptions
from phaze.place.synthetic import gpt_chain

REPO = Path(__file__).resolve().parents[1]
MPIEXEC = shutil.which("mpiexec") or str(Path(sys.executable).parent / "mpiexec")


def _items():
    items = []
    for k in range(6):
        items.append({"model": f"tiny{k % 2}", "seq": 512, "arch_id": f"a{k % 3}", "mbs": 1 + k % 2,
                      "hbm_bytes": [2, 8][k % 2] * 1024**3, "recompute": ["none", "full"][k // 3],
                      "synthetic": {"layers": 4 + 4 * (k % 2), "hidden": 1024, "heads": 16,
                                    "tps": [1, 2], "peak_flops": 100e12}})
    return items


def _run(ranks, items_file, out, extra=()):
    cmd = [MPIEXEC, "-n", str(ranks), sys.executable, "-m", "phaze", "place", "--mpi",
           "--work-items", str(items_file), "-o", str(out), "--devices", "64", "--batch", "64",
           *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    return pd.read_parquet(out)


@pytest.mark.skipif(not Path(MPIEXEC).exists(), reason="mpiexec not installed")
def test_one_two_three_ranks_equal_serial(tmp_path):
    """Every rank count gives the serial run's rows (solve_seconds, a timing, apart), also
    with more ranks than groups (a rank without work)."""
    items = tmp_path / "items.json"
    items.write_text(json.dumps(_items() + _grouped_items()))
    fixed = ("--fixed", "2x4x2")
    serial = tmp_path / "serial.parquet"
    assert main(["place", "--work-items", str(items), "-o", str(serial), "--devices", "64",
                 "--batch", "64", *fixed]) == 0
    a = pd.read_parquet(serial)
    assert len(a) == 2 * (len(_items()) + len(_grouped_items()))
    assert list(a["item"]) == sorted(a["item"])
    assert a[a.row_kind == "best"]["feasible"].any()
    for ranks in (1, 2, 3):
        b = _run(ranks, items, tmp_path / f"r{ranks}.parquet", fixed)
        pd.testing.assert_frame_equal(a.drop(columns="solve_seconds"),
                                      b.drop(columns="solve_seconds"))
    # every best row is no slower than the fixed baseline of the same item when that fits
    for i, grp in a.groupby("item"):
        best = grp[grp.row_kind == "best"].iloc[0]
        fixed_row = grp[grp.row_kind == "fixed"].iloc[0]
        if fixed_row.feasible:
            assert best.time_per_batch_s <= fixed_row.time_per_batch_s * (1 + 1e-12)
    # 2 groups on 3 ranks: the third has no work
    few = tmp_path / "few.json"
    few.write_text(json.dumps(_grouped_items()))
    c = _run(3, few, tmp_path / "few3.parquet")
    d = _run(1, few, tmp_path / "few1.parquet")
    pd.testing.assert_frame_equal(c.drop(columns="solve_seconds"), d.drop(columns="solve_seconds"))
    # no temporary files left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["items.json", "few.json", "serial.parquet", "r1.parquet", "r2.parquet", "r3.parquet",
         "few3.parquet", "few1.parquet"])


def test_assign_groups_against_brute_force():
    """Largest-first to the least loaded rank: every group once, the largest rank total
    within Graham's 4/3 - 1/(3 ranks) of the optimum found by trying every split."""
    import itertools
    import random

    from phaze.place.driver import assign_groups

    rng = random.Random(1)
    for _ in range(200):
        n, size = rng.randint(1, 8), rng.randint(1, 3)
        costs = [rng.choice([1.0, 2.0, 3.0, rng.uniform(0.1, 10)]) for _ in range(n)]
        share = assign_groups(costs, size)
        assert len(share) == size and sorted(k for s in share for k in s) == list(range(n))
        got = max(sum(costs[k] for k in s) for s in share)
        opt = min(max(sum(c for c, r in zip(costs, split) if r == q) for q in range(size))
                  for split in itertools.product(range(size), repeat=n))
        assert got <= (4 / 3 - 1 / (3 * size)) * opt + 1e-9
        assert share == assign_groups(costs, size)          # deterministic


def test_serial_fallback_without_mpi4py(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("phaze.place.driver._mpi_comm", lambda: None)
    items = tmp_path / "items.json"
    items.write_text(json.dumps(_items()[:2]))
    out = tmp_path / "o.parquet"
    assert main(["place", "--mpi", "--work-items", str(items), "-o", str(out), "--devices", "16",
                 "--batch", "16", "--fixed", "2x2x2"]) == 0
    assert "running serially" in capsys.readouterr().err
    df = pd.read_parquet(out)
    fixed = df[df.row_kind == "fixed"].iloc[0]
    # the fixed row equals a direct evaluation of the same plan
    ch = gpt_chain(layers=4, hidden=1024, heads=16, seq=512, mbs=1, t=2, peak_flops=100e12,
                   model="tiny0")
    direct = evaluate_plan(ch, 2, 2, 16, "none", 1, hbm_bytes=2 * 1024**3, links=Links(),
                           options=PlanOptions(), peak_flops=100e12)
    assert fixed.time_per_batch_s == pytest.approx(direct["time_per_batch_s"], rel=1e-12)
    assert bool(fixed.feasible) == direct["feasible"]


def test_bad_inputs_exit_2_no_output(tmp_path, capsys):
    out = tmp_path / "o.parquet"
    assert main(["place", "--recompute", "bogus", "--work-items", "x.json", "-o", str(out)]) == 2
    assert main(["place", "-o", str(out)]) == 2
    assert not out.exists()


def _grouped_items():
    """2 archs x 2 HBM sizes x 2 recompute flags of one model: 2 groups of 4 items, listed
    interleaved so that groups are not contiguous."""
    items = []
    for hbm in (2, 8):
        for rec in ("none", "full"):
            for arch, peak in (("a0", 100e12), ("a1", 150e12)):
                items.append({"model": "tiny", "seq": 512, "arch_id": arch, "mbs": 1,
                              "hbm_bytes": hbm * 1024**3, "recompute": rec,
                              "synthetic": {"layers": 6, "hidden": 1024, "heads": 16,
                                            "tps": [1, 2], "peak_flops": peak}})
    return items


def test_grouped_items_equal_one_item_at_a_time():
    """The driver groups items differing only in HBM / recompute into one best_plans call;
    every row equals the row of that item solved alone."""
    from phaze.place.driver import group_items, run_item, run_items

    items = _grouped_items()
    assert sorted(len(g) for g in group_items(items)) == [4, 4]
    ctx = {"devices": 32, "batch": 32, "links": Links(), "options": PlanOptions(),
           "interleaves": (1,), "fixed": (2, 2, 2), "graphs": {}, "latency": {}, "peak": {}}
    grouped = pd.DataFrame(run_items(items, ctx, use_mpi=False))
    alone = pd.concat([run_item(i, it, ctx) for i, it in enumerate(items)], ignore_index=True)
    alone = alone.sort_values(["item", "row_kind"]).reset_index(drop=True)
    assert list(grouped["item"]) == sorted(grouped["item"])
    pd.testing.assert_frame_equal(grouped.drop(columns="solve_seconds"),
                                  alone.drop(columns="solve_seconds"))
    assert grouped[grouped.row_kind == "best"]["feasible"].any()


def test_identical_dp_inputs_solved_once_fanned_out_to_archs():
    """Archs whose DP inputs are identical (same peak, same chains) share one group; the
    fanned-out rows equal those of each item solved alone, with each item's arch id."""
    from phaze.place.driver import group_items, run_item, run_items

    items = _grouped_items()
    for it in items:
        it["synthetic"]["peak_flops"] = 100e12       # a0 and a1 now differ only in name
    assert sorted(len(g) for g in group_items(items)) == [8]
    ctx = {"devices": 32, "batch": 32, "links": Links(), "options": PlanOptions(),
           "interleaves": (1,), "fixed": (2, 2, 2), "graphs": {}, "latency": {}, "peak": {}}
    grouped = pd.DataFrame(run_items(items, ctx, use_mpi=False))
    alone = pd.concat([run_item(i, it, ctx) for i, it in enumerate(items)], ignore_index=True)
    alone = alone.sort_values(["item", "row_kind"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(grouped.drop(columns="solve_seconds"),
                                  alone.drop(columns="solve_seconds"))
    assert set(grouped["arch_id"]) == {"a0", "a1"}


def test_table_equals_rows_built_one_by_one():
    """The columnar fan-out (templates taken per item) equals a table of rows built one
    item at a time from the same group results."""
    from phaze import __version__
    from phaze.place.driver import group_items, place_table, solve_group
    from phaze.place.table import PLACE_SCHEMA, place_frame

    items = _items() + _grouped_items() + [dict(_items()[1], arch_id="small", hbm_bytes=2**20)]
    ctx = {"devices": 32, "batch": 32, "links": Links(), "options": PlanOptions(),
           "interleaves": (1,), "fixed": (2, 2, 2), "graphs": {}, "latency": {}, "peak": {},
           "fused": True}
    groups = group_items(items)
    results = {k: solve_group(g, items, ctx) for k, g in enumerate(groups)}
    rows = []
    for k, g in enumerate(groups):
        best, fixed, (t_best, t_fixed) = results[k]
        for i in g:
            it = items[i]
            key = (float(it["hbm_bytes"]), it["recompute"])
            for kind, (plan, var), sec, method in (
                    ("best", best[key] or (None, None), t_best / len(g), "dp-1f1b+interleaved"),
                    ("fixed", fixed[key], t_fixed, "fixed-uniform")):
                row = dict.fromkeys(PLACE_SCHEMA)
                if plan:
                    row.update({c: v for c, v in plan.items() if c in PLACE_SCHEMA})
                    row.update(sequence_parallel=bool(var[1]), stages=json.dumps(plan["stages"]),
                               stage_memory=json.dumps(plan["stage_memory"]))
                row.update(item=i, model=it["model"], seq=it["seq"], arch_id=it["arch_id"],
                           mbs=it["mbs"], hbm_bytes=float(it["hbm_bytes"]),
                           recompute=it["recompute"], row_kind=kind,
                           feasible=bool(plan and plan["feasible"]), fused=True, method=method,
                           solve_seconds=sec, phaze_version=__version__)
                rows.append(row)
    rows.sort(key=lambda r: (r["item"], r["row_kind"]))
    table = place_table(groups, results, items, ctx)
    pd.testing.assert_frame_equal(table, place_frame(rows))
    assert table["feasible"].any() and (~table["feasible"]).any()
