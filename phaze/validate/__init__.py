"""Validation of phaze's performance model against measured Megatron-LM training runs
(Narayanan SC'21 Table 1, Korthikanti MLSys'23 Tables 3/5 and Figure 1)."""
