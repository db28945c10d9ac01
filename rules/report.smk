# The sweep's config as checked (results/config.yaml, what the report's `phaze evaluate`
# commands read), then the summary table, plots and a self-contained HTML report over all
# placement tables (the latency tables give the placement-blind Spotlight-style baseline
# its single-chip scores).


rule sweep_config:
    output:
        SWEEP_CONFIG,
    log:
        "results/logs/report/config.log",
    benchmark:
        "results/benchmarks/report/config.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        cfg=as_json(config),
    shell:
        "phaze check-config --config-json {params.cfg:q} -o {output} > {log} 2>&1"


rule report:
    input:
        place=place_tables(),
        latency=report_latency,
        waves=report_waves,
        grid=GRID,
        config=SWEEP_CONFIG,
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
        waves=lambda w, input: f"--waves {' '.join(input.waves)}" if input.waves else "",
    shell:
        "phaze report --place {input.place} --latency {input.latency} --grid {input.grid}"
        " --config {input.config} {params.waves} -o {params.outdir} > {log} 2>&1"
