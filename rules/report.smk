# Summary table, Pareto plot and HTML report over all placement tables.


rule report:
    input:
        place=place_tables(),
        grid=GRID,
    output:
        REPORT_FILES,
    params:
        outdir="results/report/",
    log:
        "results/logs/report/report.log",
    benchmark:
        "results/benchmarks/report/report.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "phaze report --place {input.place} --grid {input.grid} -o {params.outdir} > {log} 2>&1"
