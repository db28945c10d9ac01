# Merge the chunk shards of one (model, seq, microbatch) into one latency table; the merge
# refuses shards that fail their schema.


rule merge_latency:
    input:
        shards=lambda wc: sched_shards(wc.model, wc.seq, wc.mbs),
        grid=GRID,
    output:
        "results/latency/{model}_s{seq}_b{mbs}.parquet",
    log:
        "results/logs/latency/{model}_s{seq}_b{mbs}.log",
    benchmark:
        "results/benchmarks/latency/{model}_s{seq}_b{mbs}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        n_chunks=N_CHUNKS,
    shell:
        "phaze merge-latency {input.shards} --grid {input.grid} --n-chunks {params.n_chunks}"
        " -o {output} > {log} 2>&1"
