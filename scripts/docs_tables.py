"""Regenerate the experiment tables in docs/ from the experiments' summary files.

A table in a Markdown file sits between two marker lines naming the experiment's summary:

    <!-- experiment: results/demo/experiments/seeds/summary.md -->
    ...generated, do not edit...
    <!-- end experiment -->

Make the summaries (`snakemake results/demo/experiments/seeds/summary.md --cores 2`, one target per
marker), then run `python scripts/docs_tables.py` from the repository root: every marked block of
docs/*.md and README.md is replaced by its summary's tables (the summary's title line dropped).
A summary that is missing is named in one line and no file is changed.

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


def regenerate(text, root):
    """`text` with every marked block replaced by its summary; raises FileNotFoundError naming one."""
    def replace(match):
        path = root / match["summary"]
        if not path.is_file():
            raise FileNotFoundError(f"{path}: summary not found (make it: snakemake {match['summary']} --cores 2)")
        return match.group(1) + summary_table(path) + match.group(4)

    return BLOCK.sub(replace, text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, help="Markdown files (default docs/*.md and README.md)")
    parser.add_argument("--results-root", type=Path, default=Path("."), help="folder holding results/ (default .)")
    args = parser.parse_args(argv)
    files = args.files or [*sorted(Path("docs").glob("*.md")), Path("README.md")]
    try:
        new = {path: regenerate(path.read_text(), args.results_root) for path in files}
    except FileNotFoundError as error:
        print(f"docs_tables: {error}; no file changed", file=sys.stderr)
        return 1
    for path, text in new.items():
        if text != path.read_text():
            path.write_text(text)
            print(f"updated {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
