# Per-layer operator scheduling ILPs, batched: one job = one chunk of archs for one
# (model, seq, microbatch), all TP widths and layer kinds. An arch belongs to the chunk of
# its family (phaze.hw.arch.chunk_of: the arch without its GLB size), so archs with the same
# ILPs are solved by one job. HBM size, recomputation and devices never reach this rule.


rule schedule_chunk:
    input:
        graphs=lambda wc: graph_files(wc.model, wc.seq, int(wc.mbs)),
        grid=GRID,
    output:
        "results/sched/{model}/s{seq}_b{mbs}/{chunk}.parquet",
    log:
        "results/logs/sched/{model}/s{seq}_b{mbs}/{chunk}.log",
    benchmark:
        "results/benchmarks/sched/{model}/s{seq}_b{mbs}/{chunk}.tsv"
    # CP-SAT's 8 workers run on these CPUs (docs/sched.md)
    threads: SETTINGS.jobs.cpus_per_job
    resources:
        mem_mb=2000,
        runtime=120,
    params:
        n_chunks=N_CHUNKS,
        network=NETWORK_JSON,
        solver=SETTINGS.sched.solver,
        formulation=SETTINGS.sched.formulation,
        time_limit_s=SETTINGS.sched.time_limit_s,
        bnb_share=SETTINGS.sched.bnb_share,
        cache=shlex.quote(SETTINGS.sched.cache_dir),
    shell:
        "phaze schedule-batch --graphs {input.graphs} --grid {input.grid}"
        " --chunk {wildcards.chunk} --n-chunks {params.n_chunks} --network {params.network:q}"
        " --solver {params.solver} --formulation {params.formulation}"
        " --time-limit {params.time_limit_s} --bnb-share {params.bnb_share} --cache {params.cache}"
        " -o {output} > {log} 2>&1"
