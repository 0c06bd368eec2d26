"""Benchmark figures, kept readable (`reports/benchmarks.md`) and machine-readable (`.json`)."""

import json
import platform
from datetime import UTC, datetime
from pathlib import Path

import psutil

REPORTS_DIR = Path(__file__).resolve().parent.parent / "reports"
JSON_REPORT = REPORTS_DIR / "benchmarks.json"
MARKDOWN_REPORT = REPORTS_DIR / "benchmarks.md"


def machine() -> dict:
    return {
        "cpu_count": psutil.cpu_count(logical=True),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
    }


def record(name: str, figures: dict) -> None:
    """Store one benchmark's figures, keeping the other benchmarks' latest figures."""
    REPORTS_DIR.mkdir(exist_ok=True)
    report = json.loads(JSON_REPORT.read_text()) if JSON_REPORT.exists() else {}
    report[name] = {
        **figures,
        "measured_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
    }
    JSON_REPORT.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    MARKDOWN_REPORT.write_text(render_markdown(report))


def render_markdown(report: dict) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python -m benchmarks.run`); the same figures are in",
        "`benchmarks.json`. Ratios compare the product with its reference measured in the same",
        "run on the same machine, so they hold better than absolute times on a noisy machine.",
        "",
    ]
    for name, figures in sorted(report.items()):
        lines += [f"## {name}", "", figures.get("description", ""), "", "| figure | value |"]
        lines += ["|---|---|"]
        for key, value in sorted(figures.items()):
            if key in {"description", "machine"}:
                continue
            lines.append(f"| {key} | {_format(value)} |")
        spec = figures.get("machine", {})
        lines += [
            "",
            f"Machine: {spec.get('cpu_count')} CPUs, {spec.get('memory_gib')} GiB, "
            f"{spec.get('processor')}, Python {spec.get('python')}.",
            "",
        ]
    return "\n".join(lines)


def _format(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
