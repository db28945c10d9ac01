# The pruned search (search.method: pruned; docs/workflow.md#pruned-search), per (model,
# seq): a bound pass over every arch (`phaze prune-bound`, no ILP), wave 1 (the best bounds
# and the baselines) through the same scheduling, merge and placement commands as the
# exhaustive sweep (`use rule`), the checkpoint `prune_next` (wave 2 = the archs whose
# bound can beat wave 1's best), wave 2, and one placement table per (model, seq).
# Everything of a pruned run lives under results/prune/{model}_s{seq}/.


wildcard_constraints:
    wave=r"[12]",


rule prune_bound:
    input:
        model_inputs,
        grid=GRID,
    output:
        waves=f"{PRUNE_DIR}/bounds.parquet",
        grid=f"{PRUNE_DIR}/grid_w1.parquet",
    log:
        "results/logs/prune/{model}_s{seq}/bound.log",
    benchmark:
        "results/benchmarks/prune/{model}_s{seq}/bound.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        cfg=bound_config,
        wave1=SETTINGS.search.wave1_archs,
    shell:
        "phaze prune-bound --config-json {params.cfg:q} --grid {input.grid}"
        " --wave1-archs {params.wave1} -o {output.waves} --wave-grid {output.grid} > {log} 2>&1"


use rule schedule_chunk as prune_schedule_chunk with:
    input:
        graphs=lambda wc: graph_files(wc.model, wc.seq, int(wc.mbs)),
        grid=f"{PRUNE_DIR}/grid_w{{wave}}.parquet",
    output:
        f"{PRUNE_DIR}/sched_b{{mbs}}_w{{wave}}/{{chunk}}.parquet",
    log:
        "results/logs/prune/{model}_s{seq}/sched_b{mbs}_w{wave}/{chunk}.log",
    benchmark:
        "results/benchmarks/prune/{model}_s{seq}/sched_b{mbs}_w{wave}/{chunk}.tsv"


use rule merge_latency as prune_merge_latency with:
    input:
        shards=wave_shards,
        grid=f"{PRUNE_DIR}/grid_w{{wave}}.parquet",
    output:
        f"{PRUNE_DIR}/latency_b{{mbs}}_w{{wave}}.parquet",
    log:
        "results/logs/prune/{model}_s{seq}/latency_b{mbs}_w{wave}.log",
    benchmark:
        "results/benchmarks/prune/{model}_s{seq}/latency_b{mbs}_w{wave}.tsv"


use rule place as prune_place with:
    input:
        latency=lambda wc: wave_latency(wc.model, wc.seq, wc.wave),
        graphs=lambda wc: graph_files(wc.model, wc.seq),
        grid=f"{PRUNE_DIR}/grid_w{{wave}}.parquet",
    output:
        f"{PRUNE_DIR}/place_w{{wave}}.parquet",
    log:
        "results/logs/prune/{model}_s{seq}/place_w{wave}.log",
    benchmark:
        "results/benchmarks/prune/{model}_s{seq}/place_w{wave}.tsv"


checkpoint prune_next:
    input:
        waves=f"{PRUNE_DIR}/bounds.parquet",
        place=f"{PRUNE_DIR}/place_w1.parquet",
        latency=lambda wc: wave_latency(wc.model, wc.seq, 1),
        grid=GRID,
    output:
        waves=f"{PRUNE_DIR}/waves.parquet",
        grid=f"{PRUNE_DIR}/grid_w2.parquet",
        summary=f"{PRUNE_DIR}/waves.json",
    log:
        "results/logs/prune/{model}_s{seq}/next.log",
    benchmark:
        "results/benchmarks/prune/{model}_s{seq}/next.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        cfg=bound_config,
    shell:
        "phaze prune-next --waves {input.waves} --place {input.place} --latency {input.latency}"
        " --grid {input.grid} --config-json {params.cfg:q} -o {output.waves}"
        " --wave-grid {output.grid} --summary {output.summary} > {log} 2>&1"


rule prune_collect:
    input:
        waves=f"{PRUNE_DIR}/waves.parquet",
        place=lambda wc: [
            f"results/prune/{wc.model}_s{wc.seq}/place_w{w}.parquet"
            for w in waves_of(wc.model, wc.seq)
        ],
    output:
        "results/place/{model}_s{seq}.parquet",
    log:
        "results/logs/prune/{model}_s{seq}/collect.log",
    benchmark:
        "results/benchmarks/prune/{model}_s{seq}/collect.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "phaze prune-collect --waves {input.waves} --place {input.place} -o {output} > {log} 2>&1"


ruleorder: prune_collect > place
