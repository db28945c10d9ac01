"""GEMM latency on weight-stationary systolic arrays (vectorised with numpy).

Dataflow (what the cycle model assumes; tests/test_cost_systolic_sim.py simulates it
cycle by cycle). A TC is an R x C array of MACs (R = tc_rows along the reduction dim K,
C = tc_cols along the output dim N). C[b, m, n] = A[b, m, k] @ B[b, k, n] is cut into
folds of R x C weights (ceil(k/R) * ceil(n/C) per batch item, K-folds innermost); a fold
keeps its weights in the PEs while the m rows of A stream through, skewed by one cycle
per row; partial sums flow down and leave at the bottom into per-column accumulators.
- Each PE has two weight registers; a row-wide bus writes one fold's weights into a row
  in one cycle, as soon as a register is free in the whole row (its previous fold's last
  input has passed the row's last PE). A fold starts streaming once the previous fold's
  inputs have all entered and its weights sit in every row.
- Hence fold f starts at S_f = max(S_{f-1} + M, S_{f-2} + M + H), H = R' + C' - 1 (R', C'
  = rows and columns in use, see below), and
  F folds of M rows take
      cycles = F*M + floor((F-1)/2) * max(0, H - M) + H
  (first weights visible after 1 cycle, the last fold drains in R' + C' - 2 cycles).
  Folds are balanced: R' = ceil(k / ceil(k/R)) rows and C' = ceil(n / ceil(n/C)) columns
  are used, the others bypassed (so a fold never crosses more PEs than it needs).
- Intra-op on n cores: work units = (one of the b * ceil(n/C) output-column tiles, one
  chunk of its m rows), dealt evenly to the cores; the number of m chunks is the best of
  1, 2, 4, ..., 32 and floor(n / tiles) (weights are multicast to the cores sharing them).
  When cores outnumber tiles, N may also be cut at C/2, C/4, ... columns per tile (idle
  columns), i.e. any narrower power-of-two array's tiling; and, with one chunk of rows
  per core, fewer rows may be used (R/2, R/4, ...: more K-folds, a shallower pipeline,
  which pays on the short streams of a GEMM split over many cores): latency is then
  non-increasing in cores and in array size over power-of-two shapes (property-tested).
Memory (roofline): the GLB holds an output tile Mt x Nt chosen to fit glb_usable_fraction of
the buffer; when A, B and C do not all fit, A is re-read from HBM ceil(n/Nt) times and B
ceil(m/Mt) times. GLB -> array traffic: A once per column fold, B once per GLB row tile, C
once. A single core gets 1/n_tc of GLB and HBM bandwidth (CostParams.one_core_bw_share);
all cores together get all of it.
"""

from __future__ import annotations

import numpy as np

from phaze.cost.params import CostParams

COMPUTE, GLB, HBM, LINK = 0, 1, 2, 3
BOUND_NAMES = ("compute", "glb", "hbm", "link")


def fold_cycles(F, M, H):
    """Cycles for F folds streaming M rows each on an array with pipeline depth H = R'+C'-1."""
    F = np.asarray(F, dtype=float)
    M = np.asarray(M, dtype=float)
    H = np.asarray(H, dtype=float)
    return F * M + np.floor((F - 1) / 2) * np.maximum(0.0, H - M) + H


M_SPLITS = (1, 2, 4, 8, 16, 32)


def gemm_core_cycles(b, m, n, k, R, C, n_cores):
    """Cycles of the slowest core when a GEMM runs on n_cores R x C arrays (broadcasts).

    Work units are (output-column tile, chunk of m rows); each unit is ceil(k/R) folds of
    its chunk's rows, and units are dealt evenly to cores. The m split is the best of
    M_SPLITS and of floor(n_cores / tiles) (one chunk per core when tiles are scarce);
    each candidate is non-increasing in n_cores, so the minimum is too. With several
    cores an array may also use fewer rows or columns (any narrower power-of-two array's
    tiling, the others bypassed): a deeper pipeline only costs on the short per-core
    streams of a split GEMM, and a bigger array is then never slower than a smaller one."""
    b, m, n, k, R, C, n_cores = (np.asarray(x, dtype=float) for x in (b, m, n, k, R, C, n_cores))

    def per_core(Fn, split, Fk):
        # rows/columns in use: the balanced fold size (unused ones are bypassed)
        H = np.ceil(k / Fk) + np.ceil(n / Fn) - 1
        tiles = b * Fn
        split = np.minimum(m, split)
        units = np.ceil(tiles * split / n_cores)
        return fold_cycles(units * Fk, np.ceil(m / split), H)

    def best_for(Fn, Fk):
        best = per_core(Fn, np.maximum(1.0, np.floor(n_cores / (b * Fn))), Fk)
        if np.any(n_cores > 1):
            for s in M_SPLITS[1:]:
                best = np.minimum(best, per_core(Fn, float(s), Fk))
        return np.minimum(best, per_core(Fn, 1.0, Fk))

    def best_for_rows(Fk):
        Fn = np.ceil(n / C)
        best = best_for(Fn, Fk)
        if np.any(n_cores > 1):
            # With cores to spare a wide array may also cut N into narrower column tiles
            # (leaving columns idle) to give every core work, as a narrower array would.
            # Column widths C/2, C/4, ... (down to 1): exactly the narrower arrays of a
            # power-of-two grid. (One chunk of rows per core suffices here: these only
            # matter when tiles are scarce.)
            for halvings in range(1, 9):
                narrow = np.maximum(Fn, np.ceil(n / np.maximum(1.0, np.floor(C / 2.0**halvings))))
                best = np.minimum(best, per_core(narrow, np.maximum(1.0, np.floor(n_cores / (b * narrow))), Fk))
        return best

    Fk = np.ceil(k / R)
    best = best_for_rows(Fk)
    if np.any(n_cores > 1):
        # Fewer rows in use (R/2, R/4, ...): more K-folds, a shallower pipeline. That only
        # pays on the shortest per-core streams, i.e. with one chunk of rows per core
        # (the candidate tried here, to keep the cost model fast: 1.8 -> 11.7 s on
        # benchmarks/bench_cost.py with every split).
        Fn = np.ceil(n / C)
        one_chunk = np.maximum(1.0, np.floor(n_cores / (b * Fn)))
        for halvings in range(1, 9):
            more = np.maximum(Fk, np.ceil(k / np.maximum(1.0, np.floor(R / 2.0**halvings))))
            best = np.minimum(best, per_core(Fn, one_chunk, more))
    return best


def gemm_traffic_bytes(b, m, n, k, C, glb_bytes, params: CostParams):
    """(HBM bytes, GLB bytes) of a GEMM on a chip with a GLB of glb_bytes (broadcasts)."""
    b, m, n, k, C, glb_bytes = (np.asarray(x, dtype=float) for x in (b, m, n, k, C, glb_bytes))
    dt = float(params.dtype_bytes)
    a_b, b_b, c_b = m * k * dt, k * n * dt, m * n * dt
    words = np.maximum(glb_bytes * params.glb_usable_fraction / dt, 2.0)
    half = np.floor(words / 2)                     # output tile; the other half holds K panels
    Mt = np.minimum(m, np.maximum(np.floor(np.sqrt(half)), 1.0))
    Nt = np.minimum(n, np.maximum(np.floor(half / Mt), 1.0))
    Mt = np.minimum(m, np.maximum(np.floor(half / Nt), 1.0))
    fits = (a_b + b_b + c_b) <= words * dt
    row_tiles = np.where(fits, 1.0, np.ceil(m / Mt))
    col_tiles = np.where(fits, 1.0, np.ceil(n / Nt))
    hbm = b * (a_b * col_tiles + b_b * row_tiles + c_b)
    glb = b * (a_b * np.ceil(n / C) + b_b * row_tiles + c_b)
    return hbm, glb


def roofline(compute_s, glb_s, hbm_s):
    """Latency = max of the three terms, and which one binds (BOUND codes)."""
    stack = np.stack(np.broadcast_arrays(compute_s, glb_s, hbm_s))
    return stack.max(axis=0), stack.argmax(axis=0).astype(np.int8)


def gemm_latency(a: dict, dims: dict, params: CostParams, op_bytes=None, compute_scale=1.0,
                 memory_scale=1.0, extra_hbm_bytes=0.0):
    """Latency of GEMMs on archs. `a`: arch arrays shaped (n_arch, 1) (ID_FIELDS);
    `dims`: b, m, n, k arrays shaped (1, n_op); op_bytes: the ops' own bytes read +
    written (a floor for HBM traffic), or None. compute_scale / memory_scale (broadcast
    to (1, n_op)) multiply the compute term and the two memory terms before the roofline
    takes their max (FP8 GEMMs: phaze.cost.api.op_latencies), so a GEMM whose terms scale
    differently is bound by the right one. extra_hbm_bytes (broadcast to (1, n_op)): HBM
    traffic beyond the operands and result, unscaled (a weight GEMM's fused gradient
    accumulation: phaze.cost.params.CostParams.wgrad_accumulation_bytes).
    Returns (lat_one_s, lat_all_s, bound_one, bound_all), each (n_arch, n_op)."""
    b, m, n, k = dims["b"], dims["m"], dims["n"], dims["k"]
    R, C, ntc = a["tc_rows"], a["tc_cols"], a["n_tc"]
    hz = a["clock_hz"] * params.compute_efficiency * params.sustained_clock_fraction
    hbm_bytes, glb_bytes = gemm_traffic_bytes(b, m, n, k, C, a["glb_bytes"], params)
    if op_bytes is not None:
        hbm_bytes = np.maximum(hbm_bytes, op_bytes)
    glb_bw = a["glb_bw_Bps"] * params.glb_bw_efficiency
    hbm_bw = a["hbm_bw_Bps"] * params.hbm_bw_efficiency
    share = 1.0 / ntc if params.one_core_bw_share == "fair" else 1.0
    cs, ms = compute_scale, memory_scale
    hbm = hbm_bytes * ms + extra_hbm_bytes
    one = roofline(gemm_core_cycles(b, m, n, k, R, C, 1) / hz * cs,
                   glb_bytes / (glb_bw * share) * ms, hbm / (hbm_bw * share))
    alls = roofline(gemm_core_cycles(b, m, n, k, R, C, ntc) / hz * cs,
                    glb_bytes / glb_bw * ms, hbm / hbm_bw)
    return one[0], alls[0], one[1], alls[1]
