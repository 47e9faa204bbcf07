"""Summarise an Autobahn|Testsuite fuzzingclient report: counts per section, then every case that is not OK.

    python conformance/summarise.py /tmp/wshub-autobahn/servers/index.json [--markdown]

Exits 1 if any case is FAILED or NON-STRICT (the conformance target), else 0.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

BEHAVIORS = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED")
BAD = ("FAILED", "NON-STRICT")


def case_key(case_id: str) -> tuple[int, ...]:
    """Sort "9.10.2" after "9.2.1": numerically, part by part."""
    return tuple(int(part) for part in case_id.split("."))


def load(path: Path) -> dict[str, dict[str, object]]:
    """The cases of the report's one agent (the echo server)."""
    report: dict[str, dict[str, dict[str, object]]] = json.loads(path.read_text())
    if len(report) != 1:
        raise SystemExit(f"{path}: expected one agent, found {sorted(report)}")
    return next(iter(report.values()))


def summarise(cases: dict[str, dict[str, object]], *, markdown: bool) -> tuple[str, int]:
    """The table and the number of FAILED + NON-STRICT cases (by ``behavior`` or ``behaviorClose``)."""
    per_section: dict[str, Counter[str]] = {}
    unusual: list[str] = []
    bad = 0
    for case_id in sorted(cases, key=case_key):
        case = cases[case_id]
        behavior, close = str(case["behavior"]), str(case["behaviorClose"])
        per_section.setdefault(case_id.split(".")[0], Counter())[behavior] += 1
        if behavior != "OK" or close not in ("OK", "INFORMATIONAL"):
            unusual.append(f"  {case_id}: behavior={behavior} behaviorClose={close} "
                           f"remoteCloseCode={case.get('remoteCloseCode')}")
        if behavior in BAD or close in BAD:
            bad += 1
    lines = []
    header = ("section", "cases", *BEHAVIORS)
    rows = [(section, str(sum(c.values())), *(str(c[b]) for b in BEHAVIORS))
            for section, c in sorted(per_section.items(), key=lambda item: int(item[0]))]
    total: Counter[str] = sum(per_section.values(), Counter())
    rows.append(("total", str(sum(total.values())), *(str(total[b]) for b in BEHAVIORS)))
    if markdown:
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        lines.extend("| " + " | ".join(row) + " |" for row in rows)
    else:
        widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
        for row in (header, *rows):
            lines.append("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)))
    lines.append("")
    lines.append("cases not OK (behavior or close):" if unusual else "every case OK, behavior and close")
    lines.extend(unusual)
    return "\n".join(lines), bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("index", type=Path, help="reports/servers/index.json")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = parser.parse_args(argv)
    text, bad = summarise(load(args.index), markdown=args.markdown)
    print(text)
    print(f"\n{bad} case(s) FAILED or NON-STRICT")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
