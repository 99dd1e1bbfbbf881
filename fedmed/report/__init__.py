"""Run outputs: results.json (for machines) and, later, report.html (for people)."""

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

__all__ = ["LEDGERS_DIR", "MODEL_FILE", "PROGRESS_FILE", "RESULTS_FILE", "RunRecorder", "clear_run_folder", "read_results",
           "write_json_atomic"]
