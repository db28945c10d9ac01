#!/usr/bin/env bash
# Lint: ruff over the Python code ([tool.ruff] in pyproject.toml), snakefmt --check and
# snakemake --lint over the workflow. Installs nothing: the tools come from the project's
# venv ($VENV, default .venv; `pip install -e '.[test]'` brings ruff and snakefmt), else
# from PATH. Exits non-zero when any check fails.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
export PATH="$VENV/bin:$PATH"
rc=0

echo "== ruff check"
ruff check . || rc=1

echo "== snakefmt --check"
snakefmt --check Snakefile rules/ || rc=1

echo "== snakemake --lint"
# Accepted: "Specify a conda environment or container for each rule" (every rule runs the
# `phaze` CLI of the venv snakemake itself runs in; rules/common.smk puts it on PATH).
# Any other lint fails. (snakemake 9 ignores --lint=json, so the text is filtered.)
out=$(snakemake --lint 2>&1)
other=$(printf '%s\n' "$out" | grep -E '^ +\* ' \
        | grep -v 'Specify a conda environment or container for each rule' || true)
if [ -n "$other" ]; then
    printf '%s\n' "$out"
    echo "snakemake --lint: findings other than the accepted conda/container one" >&2
    rc=1
elif ! printf '%s\n' "$out" | grep -q '^Lints for\|^Congratulations'; then
    printf '%s\n' "$out"     # snakemake failed before linting
    rc=1
fi

[ "$rc" -eq 0 ] && echo "lint: ok" || echo "lint: FAILED" >&2
exit "$rc"
