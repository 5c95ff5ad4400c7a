"""Reports of a run: Markdown tables from results.json and matplotlib figures."""

from lmdistill.reporting.plots import make_plots, read_metrics
from lmdistill.reporting.report import compare_runs, load_results, render_report, write_report

__all__ = ["compare_runs", "load_results", "make_plots", "read_metrics", "render_report", "write_report"]
