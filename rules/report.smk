# Summary table, plots and a self-contained HTML report over all placement tables (the
# latency tables give the placement-blind Spotlight-style baseline its single-chip scores).


rule report:
    input:
        place=place_tables(),
        latency=all_latency_tables(),
        grid=GRID,
    output:
        REPORT_FILES,
    log:
        "results/logs/report/report.log",
    benchmark:
        "results/benchmarks/report/report.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        outdir=lambda w, output: os.path.dirname(output[0]) + "/",
    shell:
        "phaze report --place {input.place} --latency {input.latency} --grid {input.grid}"
        " -o {params.outdir} > {log} 2>&1"
