"""pytest plugin of bench/gpu_check.sh: results as JSON lines, each appended as soon as it exists.

    STAFAST_RESULTS=OUT/ops.jsonl python -m pytest -p gpu_results ...   (bench/ on PYTHONPATH)

A stage killed at its time limit still returns every test and benchmark it finished. Records:
  {"kind": "test", "id", "outcome", "seconds", "message"}      one per test (setup or teardown errors too)
  {"kind": "benchmark", "id", "group", "median_s", "extra_info"} one per pytest-benchmark run; on a GPU
      median_s is the do_bench median the harness puts in extra_info (bench/report.py reads the same)
Under pytest-xdist only the controller writes (it receives every worker's reports).
"""
from __future__ import annotations

import json
import os

_writer = {"on": False}


def append(record: dict, path: str | None = None) -> None:
    path = path or os.environ.get("STAFAST_RESULTS")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(record, default=str) + "\n")


def pytest_configure(config):
    _writer["on"] = bool(os.environ.get("STAFAST_RESULTS")) and not hasattr(config, "workerinput")


def _message(report) -> str:
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2])
    return report.longreprtext[-2000:] if report.failed else ""


def pytest_runtest_logreport(report):
    if not _writer["on"]:
        return
    if report.when == "call" or (report.when != "call" and not report.passed):
        append({"kind": "test", "id": report.nodeid, "outcome": report.outcome if report.when == "call" or
                not report.failed else "error", "seconds": round(report.duration, 3), "message": _message(report)})


def pytest_runtest_teardown(item):
    bench = getattr(item, "funcargs", {}).get("benchmark")
    if not _writer["on"] or bench is None or not getattr(bench, "stats", None):
        return
    extra = dict(bench.extra_info)
    median = extra["median_ms"] / 1e3 if "median_ms" in extra else bench.stats.stats.median
    append({"kind": "benchmark", "id": item.nodeid, "group": bench.group, "median_s": median, "extra_info": extra})
