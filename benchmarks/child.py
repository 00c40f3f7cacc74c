"""What the benchmarks share: running one measured side in a fresh process (its peak
resident memory read from the kernel, its figures from a JSON file it writes) and the
clock a child reads its own start-up and first step against."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def side_by_side_parser(doc: str) -> argparse.ArgumentParser:
    """The arguments of a benchmark that runs tools side by side: ``--pairs``, ``--out``, and
    the hidden ones it starts each child with (``--side``, ``--work``, ``--result``)."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=1, help="runs of each tool, in turn; medians are reported")
    ap.add_argument("--out", type=Path, default=None, help="keep model, data and runs here (default: temp dir)")
    ap.add_argument("--side", choices=["vlmtune", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return ap


def since_start() -> float:
    """Seconds since this process started (the kernel's start time of the process)."""
    ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return uptime - ticks / os.sysconf("SC_CLK_TCK")


def run_child(args: list[str], result: Path) -> dict[str, Any]:
    """Run ``python ARGS`` (which writes ``result``); its figures plus ``peak_rss_gb``."""
    result.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, *args])
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0 or not result.is_file():
        raise SystemExit(f"{' '.join(args)} failed (status {status})")
    return {**json.loads(result.read_text()), "peak_rss_gb": usage.ru_maxrss * 1024 / 1e9}


def clock_vlmtune_steps() -> tuple[dict[int, float], dict[int, float]]:
    """Note when vlmtune logs each step (seconds since the process started, and the
    process's CPU seconds): a step is logged as soon as its optimizer step is done (with
    ``train.log_every=1``)."""
    from vlmtune.train.run import Run

    cpu: dict[int, float] = {}
    logged: dict[int, float] = {}
    log = Run.log

    def clocked_log(self, step, metrics):
        logged.setdefault(step, since_start())
        cpu.setdefault(step, time.process_time())
        return log(self, step, metrics)

    Run.log = clocked_log
    return logged, cpu
