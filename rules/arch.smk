# The architecture grid (stable arch ids, area filter): `phaze arch grid`.
# Only the `arch:` block of the config reaches this rule.


rule arch_grid:
    output:
        GRID,
    log:
        "results/logs/arch/grid.log",
    benchmark:
        "results/benchmarks/arch/grid.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        spec=as_json(config["arch"]),
    shell:
        "phaze arch grid --spec {params.spec:q} -o {output} > {log} 2>&1"
