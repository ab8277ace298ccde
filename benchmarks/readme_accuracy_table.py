"""The README's accuracy table, in Markdown, from ``bench_accuracy.py``'s JSON.

Per held-out target: the best peer and its quality; the best pyroflows guide's quality in
earlier runs (``--before``, ``--previous``: optional, older JSON files of the same benchmark)
and in this one; its ratio to the best peer of the same seed (median [min-max]; issue 10's goal
is at most 0.5); its time-to-quality ratio (tq*, goal at most 0.25); AutoIAF's own quality (the
"real posteriors within 0.2 sd" goal is about AutoIAF at defaults) and the verdicts ``fit``
gave (g good, o ok, u unreliable, n not converged; counts over seeds). Qualities are medians
over seeds: KL(q‖p) in nats where log Z is known, else the largest mean or log-sd error in
posterior sds.

Usage::

    python benchmarks/readme_accuracy_table.py benchmarks/results/accuracy_cpu.json \\
        --before benchmarks/results/accuracy_cpu_before.json \\
        --previous benchmarks/results/accuracy_cpu_prestl.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

_SHORT = {"good": "g", "ok": "o", "unreliable": "u", "not converged": "n"}


def _number(value: float | None) -> str:
    if value is None:
        return "–"
    if not math.isfinite(value):
        return "inf"
    if value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-3):
        mantissa, exponent = f"{value:.1e}".split("e")
        return f"{mantissa}e{int(exponent)}"
    return f"{value:.2g}" if abs(value) < 10 else f"{value:.3g}"


def _ratio(row: dict) -> str:
    median = row["ratio_to_best_peer_median"]
    if median is None:
        return "–"
    text = f"{_number(median)} [{_number(row['ratio_to_best_peer_min'])}–"
    text += f"{_number(row['ratio_to_best_peer_max'])}]"
    return f"**{text}**" if median <= 0.5 else text


def _verdicts(counts: dict[str, int]) -> str:
    return " ".join(f"{_SHORT.get(k, k[:1])}{v}" for k, v in sorted(counts.items())) or "–"


def _best(summary: list[dict], target: str, kind: str) -> dict | None:
    rows = [r for r in summary if r["target"] == target and r["kind"] == kind]
    rows = [r for r in rows if r["quality_median"] is not None]
    return min(rows, key=lambda r: r["quality_median"]) if rows else None


def markdown_table(current: dict, before: dict | None = None, previous: dict | None = None) -> str:
    """The Markdown table of :mod:`benchmarks.readme_accuracy_table` (see its docstring)."""
    header = ["target", "best peer (quality)"]
    if before is not None:
        header.append("best pyroflows before issue 10")
    if previous is not None:
        header.append("previous run")
    header += ["best pyroflows now", "ratio [range]", "tq* ratio", "AutoIAF (fit verdicts)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    summary = current["summary"]
    for target, info in current["targets"].items():
        if info.get("development"):
            continue
        peer = _best(summary, target, "peer")
        ours = _best(summary, target, "pyroflows")
        if peer is None or ours is None:
            continue
        metric = "KL" if info["truth"] == "exact log Z" else "sd"
        cells = [f"{target} ({metric})", f"{peer['guide']}, {_number(peer['quality_median'])}"]
        for older in (before, previous):
            if older is not None:
                then = _best(older["summary"], target, "pyroflows")
                cells.append(_number(then["quality_median"]) if then else "–")
        iaf = next((r for r in summary if r["target"] == target and r["guide"] == "AutoIAF"), None)
        cells += [
            f"{ours['guide']} {_number(ours['quality_median'])}",
            _ratio(ours),
            _number(ours["tq_ratio_to_best_peer_median"]),
            "–"
            if iaf is None
            else f"{_number(iaf['quality_median'])} ({_verdicts(iaf['fit_verdicts'])})",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("current", type=Path)
    parser.add_argument("--before", type=Path, default=None)
    parser.add_argument("--previous", type=Path, default=None)
    options = parser.parse_args(argv)

    def load(path: Path | None) -> dict | None:
        return None if path is None else json.loads(path.read_text())

    print(markdown_table(load(options.current), load(options.before), load(options.previous)))


if __name__ == "__main__":
    main()
