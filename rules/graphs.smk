# Operator graphs per (model, seq, microbatch, TP width): `phaze graph`.


rule graph:
    input:
        model_inputs,
    output:
        "results/graphs/{model}/s{seq}_b{mbs}_t{tp}.json",
    log:
        "results/logs/graphs/{model}/s{seq}_b{mbs}_t{tp}.log",
    benchmark:
        "results/benchmarks/graphs/{model}/s{seq}_b{mbs}_t{tp}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        model=lambda wc: model_arg(wc.model),
        fused="--fused" if config["graph"]["fused"] else "",
        sp="--sequence-parallel" if config["graph"]["sequence_parallel"] else "",
    shell:
        "phaze graph --model {params.model:q} --seq {wildcards.seq} --mbs {wildcards.mbs}"
        " --tp {wildcards.tp} {params.sp} {params.fused} -o {output} > {log} 2>&1"
