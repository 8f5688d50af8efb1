"""The report's per-method table: intervals inside the metric's range, n beside each, and a
sentence when coverage and quality rank the groups differently."""

from __future__ import annotations

import re

from normlab.study.report import console_table, summary_table, tradeoff_note, write_report


def _rec(group, seed, modes, frac, tmp_path):
    return {
        "group": group,
        "method": group,
        "seed": seed,
        "status": "finished",
        "metrics": {"modes_covered": modes, "high_quality_frac": frac},
        "run_dir": str(tmp_path / group / str(seed)),
        "config": {"data": "ring8"},
    }


def _study(tmp_path):
    # The case: the collapsed unnormalized GAN has the best quality, SN covers more.
    return [
        _rec("none", 0, 1, 0.99, tmp_path),
        _rec("none", 1, 1, 0.97, tmp_path),
        _rec("none", 2, 2, 0.98, tmp_path),
        _rec("sn", 0, 0, 0.33, tmp_path),
        _rec("sn", 1, 1, 0.98, tmp_path),
        _rec("sn", 2, 8, 1.0, tmp_path),
    ]


def test_intervals_stay_in_range_with_n_beside(tmp_path):
    table = summary_table(_study(tmp_path))
    row = next(line for line in table.splitlines() if line.startswith("| sn "))
    cells = re.findall(r"\[([-\d.e]+), ([-\d.e]+)\] n=(\d)", row)
    assert len(cells) == 2
    (m_lo, m_hi, n1), (f_lo, f_hi, n2) = cells
    assert n1 == n2 == "3"
    assert 0 <= float(m_lo) <= float(m_hi) <= 8  # a t-interval gives [-7.83, 13.83] here
    assert 0 <= float(f_lo) <= float(f_hi) <= 1
    assert "n=3" in console_table(_study(tmp_path))


def test_coverage_against_quality_sentence(tmp_path):
    recs = _study(tmp_path)
    note = tradeoff_note(recs)
    assert note.startswith("Coverage and quality disagree: none has the highest high_quality_frac")
    assert "sn" in note and "collapses" in note
    report = write_report(recs, tmp_path, command="normlab compare").read_text()
    table_end = report.index("| sn |")
    assert report.index("Coverage and quality disagree") > table_end
    assert "bootstrap percentile" in report
    # When the group best on quality also covers the most modes: no sentence.
    agree = [r for r in recs if r["group"] == "sn"] + [
        _rec("none", 0, 0, 0.5, tmp_path),
        _rec("none", 1, 1, 0.4, tmp_path),
    ]
    assert tradeoff_note(agree) == ""
