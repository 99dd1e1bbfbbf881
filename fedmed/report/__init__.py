"""Run outputs: results.json (for machines) and report.html (for people), from the same numbers."""

from fedmed.report.html import REPORT_FILE, auroc_colour, render_report, write_report
from fedmed.report.results import (
    LEDGERS_DIR,
    MODEL_FILE,
    PROGRESS_FILE,
    RESULTS_FILE,
    RunRecorder,
    clear_run_folder,
    read_results,
    write_json_atomic,
)

__all__ = ["LEDGERS_DIR", "MODEL_FILE", "PROGRESS_FILE", "REPORT_FILE", "RESULTS_FILE", "RunRecorder", "auroc_colour",
           "clear_run_folder", "read_results", "render_report", "write_json_atomic", "write_report"]
