# Operator graphs per (model, seq, microbatch, TP width, sequence parallel, CP size, EP
# size): `phaze graph` (a graph of cp > 1 is one device's seq / cp chunk; an MoE graph of
# ep > 0 has its routed-expert GEMMs grouped per local expert; ep 0 for a dense model).


rule graph:
    input:
        model_inputs,
    output:
        "results/graphs/{model}/s{seq}_b{mbs}_t{tp}_sp{sp}_cp{cp}_ep{ep}.json",
    log:
        "results/logs/graphs/{model}/s{seq}_b{mbs}_t{tp}_sp{sp}_cp{cp}_ep{ep}.log",
    benchmark:
        "results/benchmarks/graphs/{model}/s{seq}_b{mbs}_t{tp}_sp{sp}_cp{cp}_ep{ep}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        model=lambda wc: model_arg(wc.model),
        fused="--fused" if SETTINGS.graph.fused else "--no-fused",
        attention=SETTINGS.graph.attention,
        vocab_pad=SETTINGS.graph.vocab_pad_multiple,
        sp=lambda wc: "--sequence-parallel" if wc.sp == "1" else "",
    shell:
        "phaze graph --model {params.model:q} --name {wildcards.model} --seq {wildcards.seq} --mbs {wildcards.mbs}"
        " --tp {wildcards.tp} --cp {wildcards.cp} --ep {wildcards.ep} {params.sp} {params.fused} --attention {params.attention}"
        " --vocab-pad-multiple {params.vocab_pad} -o {output} > {log} 2>&1"
