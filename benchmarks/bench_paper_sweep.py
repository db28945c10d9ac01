"""The paper sweep's (configs/paper.yaml) CPU-hours and files written, from a measured sample.

Sample (documented, reproducible): F arch "families" of the paper grid (an arch without its
on-chip buffer size: n_tc, n_vc, tc_rows, tc_cols, clocks, bandwidths), drawn with a fixed
seed stratified by tensor-core count, each with ALL of its buffer sizes present in the
grid (so the sample sees the duplicates that differ only in buffer size, the main source
of identical ILPs and identical DP inputs); every paper model at every TP width of the
config, microbatch size 1 and the largest one (8); the paper's solver settings (60 s limit).

Every figure is CPU time (user + system), never wall clock, so that other processes'
load does not inflate it: this process's (time.process_time: all its threads, so a
multi-threaded solver counts in full) plus its solver worker processes' (phaze.sched.
worker runs every non-default backend in a child process; psutil reads their CPU, reaped
children count through RUSAGE_CHILDREN). Wall clock is only printed next to them.
Measured on the sample, in this process (cold ILP cache in a scratch directory):
  t_row     CPU seconds per scheduling row outside the solver (cost model, problem, key,
            cache lookup, row): (scheduling CPU - CPU inside solve_problem) / rows
  t_ilp     mean CPU seconds per distinct ILP solved (solve_problem: list schedule, bound,
            branch and bound and the backend, with its worker process's CPU)
  f_ilp     distinct ILPs / rows of the sample (an upper bound for the whole grid, where
            more problems coincide across families)
  t_group   CPU per placement DP group (one distinct (latency chains, peak) input of one
            (model, seq, mbs), all HBM sizes and recompute flags)
  f_group   DP groups / (archs x mbs) of the sample
  t_item    CPU per placement item outside the DP (fan-out, rows, table)
  t_start   CPU of a phaze process that imports pandas (per job)
  t_bound   CPU of the pruned workflow's bounds (`phaze prune-bound`: graphs, cost model
            and problems of every (arch, layer, pass), lower bounds, DP-free bounds
            (phaze.search.plan_floor), DP bounds of the top archs; plus prune-next's DP
            bounds of the archs whose bound reaches the incumbent) per scheduling row of
            the sample
  f_eval    archs the pruned workflow evaluates exactly (waves 1 + 2) / archs, per
            (model, seq), on a second sample: B archs drawn uniformly (--bound-archs,
            fixed seed), every paper microbatch size; the bound pass (phaze.search.waves.
            bound_table, wave1_archs = 1: the paper config's 8 of 29,158 archs scaled to
            the sample, rounded up), wave 1 evaluated exactly (SweepProblem.evaluate: the
            same ILPs, cache and DP), then the survivors rule of waves.survivors. An
            incumbent from 1 of B archs is pessimistic for the whole grid (8 of 29,158).
            t_bound is measured on this sample too (the cost model is vectorised over
            archs, so a 13-arch sample would overstate it).
Extrapolation (N_* counted on the whole paper config; the grid is enumerated):
  rows      = N_archs x sum over graphs (layers x 3 passes)
  sched CPU = rows x t_row + rows x f_ilp x t_ilp + sched_jobs x t_start
  place CPU = N_archs x N_mbs x N_model_seqs x f_group x t_group (per-model t_group)
              + items x t_item + place_jobs x ranks x t_start
  other     = (graph + merge + report jobs) x t_start + merge rows x t_row_merge
  files     = per job: output(s) + log + benchmark tsv, plus one ILP cache shard per
              scheduling job (at most 1 + runtime / 600 s; compaction merges them)
Pruned (search.method: pruned, the default):
  bound CPU = rows x t_bound + N_model_seqs x t_start
  sched CPU = sum over (model, seq) of f_eval x its exhaustive scheduling CPU
              + 2 waves x sched_jobs x t_start
  place CPU = sum over (model, seq) of f_eval x its exhaustive placement CPU
              + 2 waves x place_jobs x ranks x t_start
  files     = the exhaustive count with every scheduling, merge and placement job twice
              (two waves), plus bound, next and collect jobs (3 files each, next 4)

    PYTHONPATH=. python benchmarks/bench_paper_sweep.py [--families 6] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CPU_HOURS_TARGET = 2.0
FILES_TARGET = 20_000
WAVE1_SAMPLE = 1          # search.wave1_archs scaled to the sample (8 of 29,158 -> 1)
FAMILY = ("n_tc", "n_vc", "tc_rows", "tc_cols", "vc_lanes", "clock_hz", "hbm_bw_Bps")


def cpu() -> float:
    """CPU seconds (user + system) of this process, all threads, and of its children:
    the live solver workers (phaze.sched.worker's registry, psutil) and reaped ones
    (RUSAGE_CHILDREN; a worker is reaped when it ends). Not psutil's children(), which
    reads every process of the machine (~1.7 ms CPU a call here, twice per ILP: it
    inflated t_row and t_ilp)."""
    import resource

    import psutil

    from phaze.sched.worker import _WORKERS

    total = time.process_time()
    for proc in list(_WORKERS.values()):
        try:
            t = psutil.Process(proc.pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:          # ended meanwhile: counted by RUSAGE_CHILDREN below
            pass
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return total + r.ru_utime + r.ru_stime


class _SolveCPU:
    """Wraps phaze.sched.cache.solve_problem (what ScheduleCache.solve calls for a
    miss) to add up the CPU spent in solves."""

    def __init__(self):
        import phaze.sched.cache as cache_mod

        self.mod, self.inner, self.seconds = cache_mod, cache_mod.solve_problem, 0.0
        cache_mod.solve_problem = self

    def __call__(self, *a, **kw):
        c0 = cpu()
        try:
            return self.inner(*a, **kw)
        finally:
            self.seconds += cpu() - c0


def sample_grid(grid, families: int, seed: int):
    fam = grid.groupby([c for c in FAMILY if c in grid.columns], sort=True).ngroup()
    grid = grid.assign(_fam=fam)
    rng = random.Random(seed)
    # stratified by tensor-core count: one family per n_tc value in turn
    by_tc: dict = {}
    for f, n_tc in grid.drop_duplicates("_fam")[["_fam", "n_tc"]].itertuples(index=False):
        by_tc.setdefault(int(n_tc), []).append(int(f))
    tcs = sorted(by_tc)
    rng.shuffle(tcs)
    chosen = []
    while len(chosen) < families and any(by_tc.values()):
        for t in tcs:
            if by_tc[t] and len(chosen) < families:
                chosen.append(by_tc[t].pop(rng.randrange(len(by_tc[t]))))
    return grid[grid["_fam"].isin(chosen)].drop(columns="_fam").reset_index(drop=True)


def start_cpu() -> float:
    """CPU seconds of a phaze process that loads pandas and a parquet reader (a job)."""
    code = "import time, pandas, pyarrow; from phaze.cli import build_parser; build_parser()"
    r = subprocess.run(["bash", "-c", f"TIMEFORMAT=%U+%S; time {sys.executable} -c '{code}'"],
                       capture_output=True, text=True, env={"PYTHONPATH": str(REPO),
                                                            "PATH": "/usr/bin:/bin"})
    return float(eval(r.stderr.strip().splitlines()[-1]))  # noqa: S307 - "user+sys"


def pruned_sample(name, seq, tps, st, bgrid, cache_dir):
    """(f_eval, bound-pass CPU s, bound rows, summary) of the pruned workflow for one
    (model, seq) on the arch sample `bgrid` (every microbatch size of `st`)."""
    import math

    from phaze.search.pipeline import SweepProblem, SweepSpec
    from phaze.search.waves import (bound_table, may_matter, refine, spotlight_lower_bound,
                                    wave_grid)

    spec = SweepSpec(model=name, seq=seq, tp=tps,
                     settings=replace(st, sched=replace(st.sched, cache_dir=cache_dir)))
    c0 = cpu()
    waves = bound_table(spec, bgrid, WAVE1_SAMPLE)
    dt = cpu() - c0
    sp = SweepProblem(spec, wave_grid(bgrid, waves, 1))
    thr, spot = [], []
    for arch_id, _area in sp.archs():
        d = sp.evaluate(arch_id)
        if d.feasible:
            thr.append(d.samples_per_s)
        exact = {k: sp.solved[p.key()] for k, p in sp.problems[sp._row[arch_id]].items()}
        spot.append(spotlight_lower_bound(sp, exact))
    inc = max(thr) if thr else math.nan
    spot_min = min((s for s in spot if math.isfinite(s)), default=math.nan)
    c0 = cpu()
    waves = refine(waves, inc, spec, bgrid)     # prune-next's DP bounds
    dt += cpu() - c0
    evaluated = (waves["wave"] == 1) | may_matter(waves, inc, spot_min)
    rows = len(bgrid) * sum(3 * len(g.layers) for g in sp.graphs.values())
    line = (f"{int(evaluated.sum())} of {len(bgrid)} sampled archs evaluated "
            f"(wave 1: {int((waves['wave'] == 1).sum())}), DP bounds of "
            f"{int(waves['bound_dp'].sum())}")
    return float(evaluated.mean()), dt, rows, line


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--families", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bound-archs", type=int, default=400,
                    help="archs of the uniform sample for the bound pass and f_eval")
    args = ap.parse_args()


    from phaze.hw.grid import enumerate_grid
    from phaze.model.graph import build_graph
    from phaze.model.zoo import resolve_model
    from phaze.place.driver import context, group_items, run_items, LatencyView
    from phaze.sched.cache import ScheduleCache
    from phaze.sched.layers import schedule_rows, shard_frame
    from phaze.sched.table import GRAPH_KEY, merge_shards
    from phaze.sched.layers import graph_identity
    from phaze.settings import SweepSettings

    cfg = yaml.safe_load((REPO / "configs" / "paper.yaml").read_text())
    st = SweepSettings.from_config(cfg)
    full = enumerate_grid(cfg["arch"])
    grid = sample_grid(full, args.families, args.seed)
    n_archs, n_mbs = len(full), len(st.microbatch_sizes)
    sample_mbs = sorted({min(st.microbatch_sizes), max(st.microbatch_sizes)})
    print(f"paper grid: {n_archs} archs; sample: {len(grid)} archs in {args.families} "
          f"families (n_tc {sorted(set(grid['n_tc']))}), microbatch sizes {sample_mbs}")
    net = st.net()
    models = [(m["name"], s, tuple(m["tp"])) for m in cfg["models"] for s in m["seq"]]

    tmp = tempfile.TemporaryDirectory()
    cache = ScheduleCache(tmp.name)
    solves_cpu = _SolveCPU()
    wall0 = time.perf_counter()
    solve_cpu = sched_cpu = 0.0
    n_rows = n_solved = 0
    place_cpu = 0.0
    n_groups = n_group_items = 0
    full_rows = 0            # rows of the whole paper sweep
    groups_per_model = {}
    per_model = {}           # (name, seq) -> dict(rows_full, sched_s, rows, f_eval, ...)
    bound_cpu = 0.0
    bound_rows = 0
    bgrid = full.sample(n=min(args.bound_archs, len(full)), random_state=args.seed) \
        .reset_index(drop=True)
    for name, seq, tps in models:
        spec = resolve_model(name)
        m_full_rows0, m_sched0, m_solve0, m_rows0, m_solved0 = \
            full_rows, sched_cpu, solve_cpu, n_rows, n_solved
        layers_per_mbs = []
        lat_frames, graphs = [], {}
        for mbs in st.microbatch_sizes:
            for tp in tps:
                g = build_graph(spec, seq=seq, mbs=mbs, tp=tp, **st.graph.build_kwargs())
                full_rows += n_archs * len(g.layers) * 3
                if mbs not in sample_mbs:
                    continue
                layers_per_mbs.append(len(g.layers))
                c0, s0, v0 = cpu(), cache.solves, solves_cpu.seconds
                rows = schedule_rows(g, grid, net, st.sched, cache)
                sched_cpu += cpu() - c0
                solve_cpu += solves_cpu.seconds - v0
                n_rows += len(rows)
                n_solved += cache.solves - s0
                lat_frames.append(shard_frame(rows))
                graphs[tuple(graph_identity(g)[k] for k in GRAPH_KEY)] = g
        # placement of the sample: the workflow's driver on the merged sample tables
        lat = merge_shards(lat_frames, ["sample"] * len(lat_frames))
        ctx = context(st, None)
        ctx["graphs"] = graphs
        ctx["peak"] = dict(zip(grid["arch_id"].astype(str), grid["peak_flops"].astype(float)))
        view = LatencyView(list(grid["arch_id"].astype(str)))
        for key, g in graphs.items():
            sel = lat
            for k, v in zip(GRAPH_KEY, key):
                sel = sel[sel[k] == v]
            view.add_rows(key, sel, len(g.layers))
        ctx["latency"] = view
        ctx["fused"] = st.graph.fused
        items = [{"model": name, "seq": seq, "arch_id": a, "mbs": b, "hbm_bytes": h,
                  "recompute": r} for b in sample_mbs for a in ctx["peak"]
                 for h in ctx["hbm_bytes"] for r in ctx["recompute"]]
        c0 = cpu()
        groups = group_items(items, ctx)
        run_items(items, ctx, use_mpi=False)
        dt = cpu() - c0
        place_cpu += dt
        n_groups += len(groups)
        n_group_items += len(grid) * len(sample_mbs)
        groups_per_model[name] = (len(groups), dt)
        # the pruned workflow on a uniform sample of archs: bound pass, exact wave 1
        f_eval, dt_bound, b_rows, line = pruned_sample(name, seq, tps, st, bgrid, tmp.name)
        bound_cpu += dt_bound
        bound_rows += b_rows
        per_model[(name, seq)] = dict(
            rows_full=full_rows - m_full_rows0, rows=n_rows - m_rows0,
            sched_s=sched_cpu - m_sched0, solve_s=solve_cpu - m_solve0,
            solved=n_solved - m_solved0, f_eval=f_eval, groups=len(groups),
            place_s=dt, items=len(grid) * len(sample_mbs))
        print(f"  {name:18s} s{seq}: {sum(layers_per_mbs) * 3 * len(grid)} rows, "
              f"DP groups {len(groups)} of {len(grid) * len(sample_mbs)} (arch, mbs), "
              f"place {dt:.1f} s CPU; bound pass {dt_bound:.1f} s CPU for {len(bgrid)} "
              f"archs; {line}", flush=True)
    cache.close()
    wall = time.perf_counter() - wall0

    t_row = (sched_cpu - solve_cpu) / n_rows
    t_ilp = solve_cpu / max(n_solved, 1)
    f_ilp = n_solved / n_rows
    f_group = n_groups / n_group_items
    t_group = place_cpu / n_groups
    t_start = start_cpu()
    n_model_seqs = len(models)
    n_graph_jobs = sum(len(t) for *_x, t in models) * n_mbs
    sched_jobs = n_model_seqs * n_mbs * st.jobs.n_chunks
    merge_jobs = n_model_seqs * n_mbs
    place_jobs = n_model_seqs
    ranks = st.jobs.ranks

    sched_h = (full_rows * t_row + full_rows * f_ilp * t_ilp + sched_jobs * t_start) / 3600
    place_h = (n_archs * n_mbs * n_model_seqs * f_group * t_group
               + place_jobs * ranks * t_start) / 3600
    other_h = ((n_graph_jobs + merge_jobs + 3) * t_start + full_rows * 2e-6) / 3600
    total_h = sched_h + place_h + other_h
    files = (3 * (n_graph_jobs + sched_jobs + merge_jobs + place_jobs + 2) + 8
             + sched_jobs * 1)                        # one cache shard per scheduling job
    print()
    print(f"measured on the sample: t_row {t_row * 1e6:.0f} us, t_ilp {t_ilp * 1e3:.2f} ms "
          f"({n_solved} distinct ILPs solved of {n_rows} rows, f_ilp {f_ilp:.4f}), "
          f"DP groups {n_groups} of {n_group_items} (f_group {f_group:.3f}), "
          f"t_group {t_group * 1e3:.1f} ms, t_start {t_start:.2f} s (all CPU; "
          f"sample wall {wall:.0f} s, load average {os.getloadavg()[0]:.1f})")
    print(f"paper sweep: {n_archs} archs, {full_rows:,} scheduling rows, "
          f"~{full_rows * f_ilp:,.0f} distinct ILPs (upper bound), "
          f"{n_archs * n_mbs * n_model_seqs * f_group:,.0f} DP groups; jobs: {n_graph_jobs} "
          f"graph, {sched_jobs} scheduling, {merge_jobs} merge, {place_jobs} placement")
    print(f"CPU-hours: scheduling {sched_h:.2f} + placement {place_h:.2f} + other "
          f"{other_h:.2f} = {total_h:.2f} (target {CPU_HOURS_TARGET}, ratio "
          f"{total_h / CPU_HOURS_TARGET:.2f})")
    print(f"files written: {files:,} (target {FILES_TARGET:,}, ratio {files / FILES_TARGET:.2f}); "
          f"before the sqlite shards: + one JSON file per distinct ILP "
          f"(~{full_rows * f_ilp:,.0f})")

    # ---- pruned (search.method: pruned): the bound pass + the evaluated fraction
    t_bound = bound_cpu / bound_rows
    p_sched = p_place = 0.0
    for m in per_model.values():
        t_row_m = (m["sched_s"] - m["solve_s"]) / m["rows"]
        f_ilp_m = m["solved"] / m["rows"]
        t_ilp_m = m["solve_s"] / max(m["solved"], 1)
        p_sched += m["f_eval"] * m["rows_full"] * (t_row_m + f_ilp_m * t_ilp_m)
        p_place += m["f_eval"] * n_archs * n_mbs * (m["groups"] / m["items"]) \
            * (m["place_s"] / m["groups"])
    f_eval_all = sum(m["f_eval"] * m["rows_full"] for m in per_model.values()) / full_rows
    bound_h = (full_rows * t_bound + n_model_seqs * t_start) / 3600
    p_sched_h = (p_sched + 2 * sched_jobs * t_start) / 3600
    p_place_h = (p_place + 2 * place_jobs * ranks * t_start) / 3600
    p_total = bound_h + p_sched_h + p_place_h + other_h
    p_files = files + 3 * (sched_jobs + merge_jobs + place_jobs) + sched_jobs \
        + n_model_seqs * (3 + 4 + 3)
    print()
    print(f"pruned: t_bound {t_bound * 1e6:.0f} us per row; archs evaluated exactly "
          + ", ".join(f"{k[0]} {m['f_eval']:.0%}" for k, m in per_model.items())
          + f" (row-weighted f_eval {f_eval_all:.3f}; wave1_archs {WAVE1_SAMPLE} of "
          f"{len(bgrid)} sampled archs)")
    print(f"pruned CPU-hours: bound pass {bound_h:.2f} + scheduling {p_sched_h:.2f} + placement "
          f"{p_place_h:.2f} + other {other_h:.2f} = {p_total:.2f} (target {CPU_HOURS_TARGET}, "
          f"ratio {p_total / CPU_HOURS_TARGET:.2f}); files {p_files:,} (target "
          f"{FILES_TARGET:,}, ratio {p_files / FILES_TARGET:.2f})")
    tmp.cleanup()


if __name__ == "__main__":
    main()
