# The placement DP under MPI: best plan per (arch, microbatch, HBM, recompute) for one
# (model, seq). Launcher from the `mpi` resource: mpiexec on a laptop (or serial when no
# MPI is installed), `srun --mpi=pmi2` in the SLURM profile. The DP-only axes (HBM sizes,
# recomputation, devices, batch, optimizer) reach only this rule.


rule place:
    input:
        latency=lambda wc: latency_tables(wc.model, wc.seq),
        graphs=lambda wc: graph_files(wc.model, wc.seq),
        grid=GRID,
    output:
        "results/place/{model}_s{seq}.parquet",
    log:
        "results/logs/place/{model}_s{seq}.log",
    benchmark:
        "results/benchmarks/place/{model}_s{seq}.tsv"
    threads: PLACE_RANKS
    resources:
        mem_mb=4000,
        runtime=60,
        tasks=PLACE_RANKS,
        mpi=local_mpi_launcher(),
    params:
        launch=mpi_launch,
        devices=SETTINGS.placement.devices,
        global_batch=SETTINGS.placement.global_batch,
        hbm_gib=",".join(f"{h:g}" for h in SETTINGS.placement.hbm_gib),
        recompute=",".join(SETTINGS.placement.recompute),
        optimizer=SETTINGS.placement.optimizer,
        zero1="--zero1" if SETTINGS.placement.zero1 else "--no-zero1",
        interleave=",".join(str(v) for v in SETTINGS.placement.interleave),
        ep=",".join(str(v) for v in SETTINGS.placement.ep),
        zero_stage=",".join(str(v) for v in SETTINGS.placement.zero_stages()),
        cp_comm_type=SETTINGS.placement.cp_comm_type,
        cp_a2a=(
            f"--cp-a2a-size {SETTINGS.placement.cp_a2a_size}"
            if SETTINGS.placement.cp_a2a_size
            else ""
        ),
        fixed=lambda wc: (
            f"--fixed {MODELS[wc.model]['fixed_plan']}" if "fixed_plan" in MODELS[wc.model] else ""
        ),
        network=NETWORK_JSON,
    shell:
        "{params.launch} phaze place --mpi --latency {input.latency} --graphs {input.graphs}"
        " --grid {input.grid} --devices {params.devices} --batch {params.global_batch}"
        " --hbm-gib {params.hbm_gib} --recompute {params.recompute}"
        " --optimizer {params.optimizer} {params.zero1} --interleave {params.interleave}"
        " --ep {params.ep} --zero-stage {params.zero_stage} --cp-comm-type {params.cp_comm_type}"
        " {params.cp_a2a} {params.fixed} --network {params.network:q} -o {output} > {log} 2>&1"
