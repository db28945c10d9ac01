# phaze: co-search of accelerator architecture and distributed training plan.
#
#   snakemake --cores 2                                        # the embedded default sweep
#   snakemake --profile cluster/slurm --configfile configs/paper.yaml   # the paper on SLURM
#
# The config is validated against phaze/data/schema.yaml, built into phaze.settings and checked for
# semantic errors before any job starts. Results land under results/ (see docs/workflow.md).


configfile: os.path.join(workflow.basedir, "configs", "default.yaml")


include: "rules/common.smk"
include: "rules/graphs.smk"
include: "rules/arch.smk"
include: "rules/sched.smk"
include: "rules/latency.smk"
include: "rules/place.smk"
include: "rules/report.smk"


if SETTINGS.search.method == "pruned":

    include: "rules/prune.smk"


rule all:
    default_target: True
    input:
        all_targets(),
