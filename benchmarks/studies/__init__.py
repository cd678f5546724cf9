"""Studies: scripts that print figures (benchmarks, scaling, model table, embedding floor)."""
