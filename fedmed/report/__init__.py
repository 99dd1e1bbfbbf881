"""report.html: a run's results.json rendered for people (the federation writes results.json)."""

from fedmed.report.html import REPORT_FILE, metric_colour, render_report, write_report

__all__ = ["REPORT_FILE", "metric_colour", "render_report", "write_report"]
