"""One quality table from the CSVs of several `benchmarks.quality` runs of one model on the same
seeds (a sweep split over device calls): the union of their rows, the first run's row where two
runs measured the same setting.

    python -m benchmarks.quality_merge OUT_STEM RUN1.csv RUN2.csv ... --title T --command C ...
"""
import argparse
import csv
from pathlib import Path

from benchmarks import quality

TEXT_FIELDS = ("model", "scheduler", "method", "setting", "error")
# Columns added after the first tables were made: an older CSV has them as not measured.
LATER_FIELDS = ("class_accuracy", "fd")


def read_rows(path):
    """The rows of one run's CSV, numbers as floats (steps as int), as quality.main made them."""
    rows = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = set(quality.FIELDS) - set(reader.fieldnames or ()) - set(LATER_FIELDS)
        if missing:
            raise ValueError(f"{path}: not a benchmarks.quality CSV (no {sorted(missing)})")
        for raw in reader:
            row = {k: raw[k] for k in TEXT_FIELDS}
            row["steps"] = int(raw["steps"])
            for key in set(quality.FIELDS) - set(TEXT_FIELDS) - {"steps"}:
                value = raw.get(key, "")
                row[key] = float(value) if value not in ("", "None") else float("nan")
            rows.append(row)
    return rows


def merge(runs):
    """The union of the runs' rows in order, once per (method, setting); the runs must be of one
    model and sampler."""
    merged, seen = [], set()
    for rows in runs:
        for row in rows:
            first = merged[0] if merged else row
            if (row["model"], row["scheduler"]) != (first["model"], first["scheduler"]):
                raise ValueError(f"runs of different models or samplers: {first['model']} "
                                 f"{first['scheduler']} and {row['model']} {row['scheduler']}")
            key = (row["method"], row["setting"])
            if key not in seen:
                seen.add(key)
                merged.append(row)
    return merged


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="output stem: writes OUT.csv, OUT.md, OUT.png")
    parser.add_argument("runs", nargs="+", help="the runs' CSVs")
    parser.add_argument("--title", required=True)
    parser.add_argument("--environment", required=True, help="the GPU and versions line")
    parser.add_argument("--command", action="append", required=True,
                        help="each run's command (repeat)")
    args = parser.parse_args(argv)
    rows = merge([read_rows(path) for path in args.runs])
    quality.write_csv(rows, args.out)
    summary = quality.markdown(rows, args.title, args.environment, "` and `".join(args.command))
    Path(f"{args.out}.md").write_text(summary)
    quality.plot(rows, f"{args.out}.png", args.title)
    print(summary)
    return rows


if __name__ == "__main__":
    main()
