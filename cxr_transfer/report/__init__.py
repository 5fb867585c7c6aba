"""The summary table, the charts, the offline page and the experiments table."""
