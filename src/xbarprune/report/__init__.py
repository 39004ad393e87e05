"""Reports: report.json (the source of truth), report.md, report.html and PNG plots."""

from xbarprune.report.run_report import build_report, write_report

__all__ = ["build_report", "write_report"]
