"""A chip as a JSON file: the Arch's fields (SI units) with its HBM capacity and network,
as `phaze report` writes it (chip_{model}_s{seq}.json) and `phaze arch show FILE` /
`phaze evaluate --arch FILE` read it. Derived values (arch_id, area_mm2, peak_flops,
vector_peak_ops) may be present; they are checked, not read."""

from __future__ import annotations

import math

from phaze.errors import UserError, unknown_field_fix
from phaze.hw.arch import Arch, Network

DERIVED = ("arch_id", "area_mm2", "peak_flops", "vector_peak_ops")


def is_chip_file(name: str) -> bool:
    return str(name).endswith(".json")


def chip_dict(arch: Arch) -> dict:
    """The JSON object of a chip (Arch.to_dict: fields, hbm_bytes, network, derived)."""
    return arch.to_dict()


def read_chip(path: str) -> Arch:
    from phaze.files import read_json

    from phaze.hw.presets import PRESETS

    d = read_json(path, "--arch", fix=f"give a preset ({', '.join(sorted(PRESETS))}), a chip "
                  "JSON file (phaze report's chip_*.json) or --grid G --arch ID (`phaze arch "
                  "grid` writes G)")
    fields = set(Arch.__dataclass_fields__)
    extra = set(d) - fields - set(DERIVED)
    if extra:
        bad = sorted(extra)[0]
        raise UserError(f"{path}: unknown key {bad!r}", field="--arch",
                        fix=unknown_field_fix(bad, fields | set(DERIVED)))
    kw = {k: v for k, v in d.items() if k in fields}
    if isinstance(kw.get("network"), dict):
        kw["network"] = Network.from_dict(kw["network"])
    try:
        arch = Arch(**kw)
    except TypeError as e:
        raise UserError(f"{path}: {e}", field="--arch",
                        fix="give the fields of a chip JSON as `phaze report` writes it") from None
    for k in DERIVED:
        if k in d and k != "arch_id" and not math.isclose(float(d[k]), getattr(arch, k),
                                                          rel_tol=1e-9):
            raise UserError(f"{path}: {k} {d[k]} disagrees with the fields "
                            f"({getattr(arch, k)})", field="--arch",
                            fix=f"drop {k} (derived from the fields) or correct it")
    if "arch_id" in d and d["arch_id"] != arch.arch_id:
        raise UserError(f"{path}: arch_id {d['arch_id']} disagrees with the fields "
                        f"({arch.arch_id})", field="--arch",
                        fix="drop arch_id (derived from the fields) or correct it")
    return arch
