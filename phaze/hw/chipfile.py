"""A chip as a JSON file: the Arch's fields (SI units) with its HBM capacity and network,
as `phaze report` writes it (chip_{model}_s{seq}.json) and `phaze arch show FILE` /
`phaze evaluate --arch FILE` read it. So `phaze arch show NAME --json` output reads back:
the derived values it adds (DERIVED: arch_id, area_mm2, peak_flops, vector_peak_ops and the
area breakdown tc_mm2, vc_mm2, glb_mm2) are checked against the fields, not read, and the
notes it adds for a grid arch (NOTES) are ignored; the HBM size and network such a grid
arch leaves null must be filled in."""

from __future__ import annotations

import math

from phaze.errors import UserError, unknown_field_fix
from phaze.hw.arch import Arch, Network
from phaze.hw.area import area_breakdown_mm2

DERIVED = ("arch_id", "area_mm2", "peak_flops", "vector_peak_ops", "tc_mm2", "vc_mm2",
           "glb_mm2")
NOTES = ("source", "hbm_gib_swept")     # `phaze arch show ID --grid G`: where values came from


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
    known = fields | set(DERIVED) | set(NOTES)
    extra = set(d) - known
    if extra:
        bad = sorted(extra)[0]
        raise UserError(f"{path}: unknown key {bad!r}", field="--arch",
                        fix=unknown_field_fix(bad, known))
    null_fix = {"hbm_bytes": "the HBM size in bytes (80 GiB: 85899345920)",
                "network": "`phaze arch show ID --grid G --config CFG --json` writes the "
                           "sweep's network"}
    for k, how in null_fix.items():
        if k in d and d[k] is None:
            raise UserError(f"{path}: {k} is null (a grid stores the chip only)", field="--arch",
                            fix=f"give {k}: {how}")
    kw = {k: v for k, v in d.items() if k in fields}
    if isinstance(kw.get("network"), dict):
        kw["network"] = Network.from_dict(kw["network"])
    try:
        arch = Arch(**kw)
    except TypeError as e:
        raise UserError(f"{path}: {e}", field="--arch",
                        fix="give the fields of a chip JSON as `phaze report` writes it") from None
    derived = chip_dict(arch)
    derived.update(area_breakdown_mm2(arch.n_tc, arch.tc_rows, arch.tc_cols, arch.n_vc,
                                      arch.vc_lanes, arch.glb_bytes))
    for k in DERIVED:
        if k in d and not _same(d[k], derived[k]):
            raise UserError(f"{path}: {k} {d[k]!r} disagrees with the other fields, from which "
                            f"it is derived ({derived[k]!r})", field="--arch",
                            fix=f"remove {k} or make it consistent with the other fields")
    return arch


def _same(given, derived) -> bool:
    if isinstance(derived, str) or isinstance(given, bool) or not isinstance(given, (int, float)):
        return given == derived
    return math.isclose(given, derived, rel_tol=1e-9)
