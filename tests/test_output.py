"""What the commands write: progress in a log and on a terminal, bench/report.py's header."""
import importlib.util
import io
import json
import os
import time

import stafast.progress
from stafast.progress import progress_bar

spec = importlib.util.spec_from_file_location("report", os.path.join(os.path.dirname(__file__), "..", "bench", "report.py"))
report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(report)

MACHINE = {"cpu": {"brand_raw": "AMD EPYC"}, "python_version": "3.11.7"}
DATA = {"group": "frames", "stats": {"median": 0.5}, "extra_info": {"op": "data", "impl": "torch", "clips_per_s": 12.0}}
OP = {"group": "pool fwd", "stats": {"median": 1e-3},
      "extra_info": {"op": "pool", "impl": "eager", "device": "x86_64 CPU, 2 threads", "torch": "2.14.1", "triton": "3.8.0"}}


def table(tmp_path, benchmarks) -> str:
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"machine_info": MACHINE, "datetime": "2026-12-01T22:00:00.1", "benchmarks": benchmarks}))
    return report.main(str(path))


def test_header_from_the_first_benchmark_that_records_the_device(tmp_path):
    assert table(tmp_path, [DATA, OP]).splitlines()[0] == ("Device: x86_64 CPU, 2 threads; torch 2.14.1, triton 3.8.0; "
                                                           "machine: AMD EPYC; date 2026-12-01T22:00:00.")
    data_only = table(tmp_path, [DATA]).splitlines()
    assert data_only[0].startswith("Device and versions: not recorded by these benchmarks; python 3.11.7;")
    assert "None" not in "\n".join(data_only) and not any(line.startswith("| op,") for line in data_only)
    assert "| frames: torch | 12 | 1.00x |" in data_only


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_bar_on_a_terminal_and_plain_lines_in_a_log(monkeypatch):
    monkeypatch.setattr(stafast.progress, "LOG_EVERY_S", 0.2)
    log, terminal = io.StringIO(), Terminal()
    for stream in (log, terminal):
        bar = progress_bar(range(6), desc="features", stream=stream)
        for _ in bar:
            time.sleep(0.1)
            bar.set_postfix(loss="0.5")
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and 3 <= len(lines) <= 5, lines  # at the start, every 0.2 s, at the end
    assert lines[0].startswith("features: 0/6 (0%)") and lines[-1].startswith("features: 6/6 (100%)")
    assert "loss=0.5" in lines[-1] and "\r" in terminal.getvalue()
    quiet = io.StringIO()
    list(progress_bar(range(3), desc="features", enabled=False, stream=quiet))
    progress_bar(total=3, desc="steps", enabled=False, stream=quiet).close()
    assert quiet.getvalue() == ""
