"""Rebuild the bundled data subsets in ``pytest_qxai/data/`` from ``../shared/datasets`` (deterministic).

Usage (from the repository root): ``python tools/build_data.py [--src ../shared/datasets] [--out pytest_qxai/data]``.
Only the data files are written; the LICENSE and ATTRIBUTION.md files next to them are maintained by hand.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any, Iterable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pytest_qxai.datasets import NLI_LABELS, decode_literal_escapes, seeded_order  # noqa: E402

SEED = 0
ESNLI_PER_LABEL = 400
ECQA_ITEMS = 800
CALIBRATION_PER_SOURCE = 128
CALIBRATION_WORDS = (60, 120)
LRE_FOLDERS = ("factual", "commonsense", "linguistic")


def norm(text: str) -> str:
    """Whitespace collapsed to single spaces and stripped."""
    return " ".join(text.split())


def sentence(text: str) -> str:
    """``text`` normalised, capitalised and ending with terminal punctuation."""
    text = norm(text)
    text = text[:1].upper() + text[1:]
    return text if text[-1:] in ".!?\"'" else text + "."


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file with a header (handles CRLF and quoted multi-line fields)."""
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """One compact JSON object per line, UTF-8, ``\\n`` line endings."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def build_esnli(src: Path, out: Path) -> None:
    """400 test items per label, ranked by hash of (SEED, id) within each label, written in upstream order."""
    items = [
        {"id": f"esnli-test-{row['idx']}", "premise": norm(row["premise"]), "hypothesis": norm(row["hypothesis"]),
         "label": row["label"],
         "explanations": [norm(row["explanation_1"]), norm(row["explanation_2_tok"]), norm(row["explanation_3_tok"])]}
        for row in read_csv(src / "esnli" / "esnli_test.csv")
    ]
    chosen = seeded_order(items, SEED, key=lambda it: it["id"], stratum=lambda it: it["label"])
    chosen = chosen[: ESNLI_PER_LABEL * len(NLI_LABELS)]
    write_jsonl(out / "esnli" / "esnli.jsonl", sorted(chosen, key=lambda it: int(it["id"].rsplit("-", 1)[1])))


def build_ecqa(src: Path, out: Path) -> None:
    """800 test items (those with five distinct options), ranked by hash of (SEED, q_no), in upstream order."""
    items = []
    for row in read_csv(src / "ecqa" / "cqa_data_test.csv"):
        options = [norm(row[f"q_op{i}"]) for i in range(1, 6)]
        if len(set(options)) < len(options):
            continue
        items.append({"id": row["q_no"], "question": norm(row["q_text"]), "options": options,
                      "answer": norm(row["q_ans"]), "explanation": norm(row["taskB"]),
                      "positives": [norm(line) for line in row["taskA_pos"].split("\n") if line.strip()]})
    position = {item["id"]: i for i, item in enumerate(items)}
    chosen = seeded_order(items, SEED, key=lambda it: it["id"])[:ECQA_ITEMS]
    write_jsonl(out / "ecqa" / "ecqa.jsonl", sorted(chosen, key=lambda it: position[it["id"]]))


def repair(value: Any) -> Any:
    """Literal ``\\uXXXX`` sequences decoded and surrounding whitespace stripped, in every string."""
    if isinstance(value, str):
        return decode_literal_escapes(value).strip()
    if isinstance(value, list):
        return [repair(v) for v in value]
    if isinstance(value, dict):
        return {k: repair(v) for k, v in value.items()}
    return value


def build_lre(src: Path, out: Path) -> None:
    """Every factual, commonsense and linguistic relation, repaired, in the upstream JSON layout."""
    for folder in LRE_FOLDERS:
        for file in sorted((src / "lre_relations" / "data" / folder).glob("*.json")):
            data = repair(json.loads(file.read_text(encoding="utf-8")))
            target = out / "lre" / folder / file.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(data, indent=4, ensure_ascii=False) + "\n", encoding="utf-8")


def paragraphs(units: Iterable[str], count: int) -> list[str]:
    """``count`` paragraphs of 60–120 words, each made of consecutive units that fit."""
    low, high = CALIBRATION_WORDS
    result: list[str] = []
    current: list[str] = []
    for unit in units:
        size = sum(len(u.split()) for u in current)
        if size + len(unit.split()) > high:
            continue
        current.append(unit)
        if size + len(unit.split()) >= low:
            result.append(" ".join(current))
            current = []
            if len(result) == count:
                return result
    raise SystemExit(f"not enough calibration text for {count} paragraphs")


def build_calibration(src: Path, out: Path) -> None:
    """Paragraphs from e-SNLI dev (premise + first explanation) and ECQA val (free-flow explanations).

    Units whose premise or explanation also occurs in the test splits are left out, so that no calibration
    text is evaluation text.
    """
    esnli_test = read_csv(src / "esnli" / "esnli_test.csv")
    seen = {norm(row["premise"]) for row in esnli_test} | {norm(row["explanation_1"]) for row in esnli_test}
    groups: dict[str, dict[str, str]] = {}
    for row in read_csv(src / "esnli" / "esnli_dev.csv"):
        if norm(row["premise"]) not in seen and norm(row["explanation_1"]) not in seen:
            groups.setdefault(norm(row["premise"]), row)
    esnli_units = [(f"esnli-dev-{row['idx']}", f"{sentence(row['premise'])} {sentence(row['explanation_1'])}")
                   for row in groups.values()]
    ecqa_test = {norm(row["taskB"]) for row in read_csv(src / "ecqa" / "cqa_data_test.csv")}
    ecqa_units = [(f"ecqa-val-{row['q_no']}", sentence(row["taskB"]))
                  for row in read_csv(src / "ecqa" / "cqa_data_val.csv") if norm(row["taskB"]) not in ecqa_test]
    records = []
    for source, units in (("esnli-dev", esnli_units), ("ecqa-val", ecqa_units)):
        ordered = (text for _, text in seeded_order(units, SEED, key=lambda u: u[0]))
        for i, text in enumerate(paragraphs(ordered, CALIBRATION_PER_SOURCE)):
            records.append({"id": f"calib-{source}-{i:03d}", "text": text, "source": source})
    write_jsonl(out / "calibration" / "calibration.jsonl", records)


def main(argv: list[str] | None = None) -> None:
    """Build every subset."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=ROOT.parent / "shared" / "datasets")
    parser.add_argument("--out", type=Path, default=ROOT / "pytest_qxai" / "data")
    args = parser.parse_args(argv)
    for build in (build_esnli, build_ecqa, build_lre, build_calibration):
        build(args.src, args.out)


if __name__ == "__main__":
    main()
