"""The compare section's sentence on memory (phaze.report.compare.memory_effect) against the
placement rows it reads."""

import pandas as pd

from phaze.report.compare import memory_effect

GiB = 1024**3


def _rows(rates_by_hbm):
    return pd.DataFrame([dict(model="m", seq=128, arch_id="a", strategy="optimised",
                              samples_per_s=r, memory_per_device_bytes=mem * GiB, hbm_bytes=h * GiB)
                         for h, (r, mem) in rates_by_hbm.items()])


def test_a_tiny_gap_is_not_called_the_speedup_of_the_larger_hbm():
    place = _rows({64: (499.407, 40.0), 32: (499.368, 30.0)})
    w = place[place["hbm_bytes"] == 64 * GiB].iloc[0]
    b = pd.Series(dict(hbm_bytes=32 * GiB))
    text = memory_effect(place, w, b)
    assert "almost none of the difference" in text and "x less" not in text


def test_a_real_gap_is_given_as_a_factor():
    place = _rows({64: (600.0, 40.0), 32: (400.0, 30.0)})
    w = place[place["hbm_bytes"] == 64 * GiB].iloc[0]
    text = memory_effect(place, w, pd.Series(dict(hbm_bytes=32 * GiB)))
    assert "(1.50x less)" in text and "comes from the larger HBM" in text
