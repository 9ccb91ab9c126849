"""Regenerate the experiment tables in docs/ from the experiments' summary files.

A table in a Markdown file sits between two marker lines naming the experiment's summary:

    <!-- experiment: results/demo/experiments/seeds/summary.md -->
    ...generated, do not edit...
    <!-- end experiment -->

Make the summaries (`snakemake results/demo/experiments/seeds/summary.md --cores 2`, one target per
marker), then run `python scripts/docs_tables.py` from the repository root: every marked block of
docs/*.md and README.md is replaced by its summary's tables (the summary's title line dropped).
A block whose summary is not made yet is left as it is, and named.

Usage: python scripts/docs_tables.py [FILE.md ...] [--results-root DIR]
"""

import argparse
import re
import sys
from pathlib import Path

BLOCK = re.compile(r"(<!-- experiment: (?P<summary>\S+) -->\n)(?P<body>.*?)(<!-- end experiment -->)", re.S)


def summary_table(path):
    """The summary's Markdown without its title line."""
    lines = path.read_text().splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    return "\n".join(lines).strip() + "\n"


def regenerate(text, root, missing):
    """`text` with every marked block replaced by its summary; the summaries not made yet are
    added to the set `missing` and their blocks left as they are."""
    def replace(match):
        path = root / match["summary"]
        if not path.is_file():
            missing.add(match["summary"])
            return match.group(0)
        return match.group(1) + summary_table(path) + match.group(4)

    return BLOCK.sub(replace, text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, help="Markdown files (default docs/*.md and README.md)")
    parser.add_argument("--results-root", type=Path, default=Path("."), help="folder holding results/ (default .)")
    args = parser.parse_args(argv)
    files = args.files or [*sorted(Path("docs").glob("*.md")), Path("README.md")]
    missing = set()
    new = {path: regenerate(path.read_text(), args.results_root, missing) for path in files}
    for summary in sorted(missing):
        print(f"docs_tables: {summary} not made yet (snakemake {summary} --cores 2): its blocks are left as they are",
              file=sys.stderr)
    for path, text in new.items():
        if text != path.read_text():
            path.write_text(text)
            print(f"updated {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
