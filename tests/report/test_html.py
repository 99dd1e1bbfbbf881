"""report.html: every section, only results.json's numbers, escaped, self-contained, and missing parts said in words."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from fedmed.errors import FedmedError
from fedmed.report import REPORT_FILE, metric_colour, render_report, write_report
from fedmed.report.plots import has_test_loss
from tests.report.conftest import FINDING, make_results, numbers_missing_from, visible_text


@pytest.fixture(scope="module")
def page() -> str:
    """The fixture document's page, rendered once: matplotlib takes half a second."""
    return render_report(make_results())


SECTIONS = ["summary", "findings", "convergence", "epsilon", "cross-site", "comparison", "subgroups", "privacy",
            "failures"]


def test_sections_in_order(page: str) -> None:
    positions = [page.find(f'<section id="{name}">') for name in SECTIONS]
    assert -1 not in positions and positions == sorted(positions)


def test_summary_and_sections_show_the_run(page: str) -> None:
    text = " ".join(visible_text(page).split())
    for expected in [
        "chest-xray-demo", "completed", "0.1.0", "2026-01-01T00:00:00+00:00", "188 s", "site-a, site-b, site-c",
        "3 planned; last recorded: round 3", "densenet121", "fedavg",
        "target epsilon 2 per site, delta 1e-05, max grad norm 1, accountant prv; sampling and noise from each "
        "site's own CSPRNG", "Secure aggregation on",
        FINDING,
        "0.874 [0.812, 0.929]", "suppressed", "local:site-c : site-c declined to share a model",
        "Overall: n 110, prevalence 0.280, AUROC 0.791 [0.722, 0.853]",
        "Worst group: F · Largest AUROC gap: 0.159 · Equalized-odds difference: 0.141",
        "suppressed: too few patients to release",
        "Ledger: ledgers/site-b.jsonl", "epsilon=1.291, delta=1e-05",
        "3 train 4417 site-c refused: epsilon budget would be exceeded",
    ]:
        assert expected in text


def test_figures_are_inline_pngs(page: str) -> None:
    images = re.findall(r'<img src="([^"]*)"', page)
    assert len(images) == 2 and all(src.startswith("data:image/png;base64,iVBOR") for src in images)


@pytest.mark.parametrize("auroc", [0.874, 0.652, 0.921])
def test_heatmap_cells_carry_their_colour(auroc: float, page: str) -> None:
    assert f"background-color:{metric_colour(auroc)}" in page


def test_metric_colour_runs_from_pale_at_chance_to_dark_at_perfect() -> None:
    def brightness(colour: str) -> int:
        return sum(int(colour[i:i + 2], 16) for i in (1, 3, 5))

    assert re.fullmatch(r"#[0-9a-f]{6}", metric_colour(0.8))
    assert metric_colour(0.2) == metric_colour(0.5) and metric_colour(1.0) == metric_colour(1.3)
    assert brightness(metric_colour(0.5)) > brightness(metric_colour(0.75)) > brightness(metric_colour(1.0))


def test_every_number_shown_is_in_results(page: str, results: dict[str, Any]) -> None:
    assert numbers_missing_from(page, results) == []


def test_the_numbers_check_catches_a_derived_number(page: str, results: dict[str, Any]) -> None:
    html = page.replace("</footer>", " AUROC difference 0.041 vs 0.0415, 0.8741, 12345</footer>")
    assert [m.split(" in ")[0] for m in numbers_missing_from(html, results)] == ["0.0415", "0.8741", "12345"]


def test_names_are_escaped(results: dict[str, Any]) -> None:
    evil = "<script>alert(1)</script>"
    results = json.loads(json.dumps(results).replace("site-b", evil.replace("/", "\\/")))
    results["config"]["name"] = f'"><img src=x onerror=alert(2)>{evil}'
    html = render_report(results)
    assert "<script" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert numbers_missing_from(html, results) == []


def test_page_is_self_contained(page: str) -> None:
    assert all(src.startswith("data:") for src in re.findall(r'src="([^"]*)"', page))
    without_data = re.sub(r'"data:[^"]*"', '""', page)
    for reference in ("http:", "https:", "//", "<script", "<link", "@import", "url("):
        assert reference not in without_data


def test_stopped_run_without_evaluation(results: dict[str, Any]) -> None:
    results.update(status="stopped", status_reason="site-c left the federation in round 2")
    del results["evaluation"]
    results["rounds"] = results["rounds"][:2]
    results["sites"]["site-c"]["privacy"] = None
    html = render_report(results)
    text = " ".join(visible_text(html).split())
    assert "stopped: site-c left the federation in round 2" in text
    assert "No cross-site or subgroup evaluation in this run: it stopped before the end" in text
    assert "No privacy ledger: this site never trained in this run." in text
    assert "last recorded: round 2" in text and 'id="failures"' not in html
    assert numbers_missing_from(html, results) == []


def test_a_run_with_seeded_randomness_says_so(results: dict[str, Any]) -> None:
    results["unsafe_reproducible"] = True
    text = " ".join(visible_text(render_report(results)).split())
    assert "sampling and noise seeded from the plan (unsafe)" in text
    assert "no differential privacy held against the server in this run" in text
    assert "no differential privacy held" not in " ".join(visible_text(render_report(make_results())).split())


def test_the_loss_panel_only_when_sites_report_a_test_loss(results: dict[str, Any], page: str) -> None:
    assert "Right: test loss at each site" in visible_text(page)
    for entry in results["rounds"]:  # a segmentation run: its sites report no test loss
        for site in entry["sites"].values():
            site.pop("test_eval_loss", None)
    assert not has_test_loss(results, ["site-a", "site-b", "site-c"])
    text = " ".join(visible_text(render_report(results)).split())
    assert "Test AUROC at each site and pooled over all sites' test sets (dashed)." in text and "Right:" not in text


def test_run_that_recorded_nothing() -> None:
    html = render_report({"status": "stopped", "status_reason": "no site answered", "rounds": []})
    text = " ".join(visible_text(html).split())
    assert "No rounds were recorded." in text and "no site answered" in text and "<img" not in html


def test_only_the_global_model_and_null_cells(results: dict[str, Any]) -> None:
    evaluation = results["evaluation"]
    evaluation["models"] = evaluation["models"][:1]
    evaluation["matrix"] = {"global": {"site-a": evaluation["matrix"]["global"]["site-a"], "site-b": None}}
    evaluation.update(refused={}, findings=[], comparison={})
    evaluation["subgroups"]["site-c"] = {"overall": {"suppressed": True}, "attributes": {}}
    html = render_report(results)
    text = " ".join(visible_text(html).split())
    assert "No gap between sites or patient groups was found: none larger than 0.05 in AUROC" in text
    assert "site-a alone" not in text and "Models not evaluated" not in text
    assert "No comparison was run." in text
    assert "Overall: suppressed: too few patients to release." in text
    assert numbers_missing_from(html, results) == []


def test_write_report_writes_the_page_beside_results(results: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "results.json").write_text(json.dumps(results))
    path = write_report(tmp_path)
    assert path == tmp_path / REPORT_FILE
    assert path.read_text(encoding="utf-8") == render_report(results)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: None, "no results.json in this run folder"),
        (lambda d: (d / "results.json").write_text('{"rounds": ['), "results.json: unreadable"),
        (lambda d: (d / "results.json").write_text("[1, 2]"), "not a fedmed results document"),
    ],
    ids=["missing", "truncated", "not-a-document"],
)
def test_write_report_names_the_folder_when_results_are_unusable(setup: Any, message: str, tmp_path: Path) -> None:
    setup(tmp_path)
    with pytest.raises(FedmedError, match=re.escape(message)) as raised:
        write_report(tmp_path)
    assert str(tmp_path) in str(raised.value)
    assert not (tmp_path / REPORT_FILE).exists()


def test_write_report_on_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FedmedError, match="no such run folder"):
        write_report(tmp_path / "nope")


def test_end_of_run_refusals_are_listed_without_a_round(results: dict[str, Any]) -> None:
    results["evaluation"]["failures"] = [
        {"stage": "cross-site evaluation", "node": 7, "reason": "site-c: no test images"}
    ]
    text = " ".join(visible_text(render_report(results)).split())
    assert "end of run cross-site evaluation 7 site-c: no test images" in text
