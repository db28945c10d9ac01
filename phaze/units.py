"""Unit constants. Everything inside phaze is SI (seconds, bytes, FLOP, Hz, bytes/s)."""

KiB = 1024
MiB = 1024**2
GiB = 1024**3
KB = 1000
MB = 1000**2
GB = 1000**3
TB = 1000**4

BF16_BYTES = 2
FP32_BYTES = 4
