"""Korthikanti et al. (MLSys'23) Table 4, held out: one transformer layer of the 22B model,
forward and backward milliseconds, predicted by the same code `phaze evaluate` runs.

Table 5's iteration times (the a100 fit) only see whole iterations; Table 4 splits one
layer into its forward and backward pass, with and without sequence parallelism and
recomputation. The prediction builds the layer as the default framework profile does
(megatron-lm-2022: eager bias kernels, asynchronous TP all-reduce in the backward) and
sums its kernels (phaze.place.evaluate.layer_latencies). Backward with full
recomputation = backward + forward; with selective = backward + the attention core's
re-run. Never fitted on (docs/validate.md).
"""

from __future__ import annotations


def predict_layer_times(params=None, options: dict | None = None) -> list[dict]:
    """Rows of Table 4 with the model's figures: experiment, forward_ms, backward_ms
    (measured), pred_forward_ms, pred_backward_ms, err_forward_pct, err_backward_pct.
    `params`: CostParams of the a100 preset (default: the shipped calibration); `options`:
    PlanOptions overrides on the default profile (as evaluate_model's)."""
    from phaze.hw.presets import get_preset
    from phaze.model.graph import build_graph
    from phaze.place.evaluate import default_cost_params, layer_latencies, profile_options
    from phaze.validate.data import korthikanti_cases, korthikanti_layer_rows
    from phaze.validate.evaluate import model_spec_of

    arch = get_preset("a100")
    params = params or default_cost_params(arch)
    rows = korthikanti_layer_rows()
    case = next(c for c in korthikanti_cases() if c.name.split("/")[0] == rows[0]["model"])
    spec = model_spec_of(case)
    gopts, opts = profile_options(arch, options=options)
    passes = {}
    for sp in (False, True):
        g = build_graph(spec, seq=case.seq, mbs=case.microbatch, tp=case.tp,
                        sequence_parallel=sp, **gopts)
        lat, _ = layer_latencies(g, arch, arch.network, params,
                                 async_tp=opts.async_tensor_model_parallel_allreduce)
        block = [i for i, layer in enumerate(g.layers) if layer.kind == "block"][0]
        passes[sp] = [1e3 * x for x in lat[block]]      # fwd, bwd, selective re-run (ms)
    out = []
    for r in rows:
        f, b, sel = passes[bool(r["sequence_parallel"])]
        b = b + {"none": 0.0, "full": f, "selective": sel}[r["recompute"]]
        out.append({**r, "pred_forward_ms": f, "pred_backward_ms": b,
                    "err_forward_pct": 100.0 * (f - r["forward_ms"]) / r["forward_ms"],
                    "err_backward_pct": 100.0 * (b - r["backward_ms"]) / r["backward_ms"]})
    return out


def text_table(rows: list[dict]) -> str:
    lines = ["korthikanti2023_table4  (held out: one 22B layer, t 8, mbs 4; milliseconds)",
             f"{'experiment':<14}{'fwd':>7}{'pred':>8}{'err':>8}{'bwd':>9}{'pred':>8}{'err':>8}"]
    for r in rows:
        lines.append(f"{r['experiment']:<14}{r['forward_ms']:>7.1f}{r['pred_forward_ms']:>8.2f}"
                     f"{r['err_forward_pct']:>+7.1f}%{r['backward_ms']:>9.1f}"
                     f"{r['pred_backward_ms']:>8.2f}{r['err_backward_pct']:>+7.1f}%")
    errs = [abs(r[k]) for r in rows for k in ("err_forward_pct", "err_backward_pct")]
    lines.append(f"mean |error| {sum(errs) / len(errs):.2f}%  max {max(errs):.2f}%")
    return "\n".join(lines)
