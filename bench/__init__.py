"""Benchmarks of the pipeline's stages, side by side with reference implementations.

`python -m bench` (from the repository root, in the project's virtual environment) runs every
item, prints the table and writes bench/results.json and docs/benchmarks.md; `--quick` runs the
same comparisons on tiny inputs in seconds (tests/test_bench.py). See bench/run.py for options.

Modules:
    run          the command: options, items, outputs
    common       timing (interleaved, warm-up, medians), datasets, CAMs made from ground truth
    reference    the reference sides: straightforward re-implementations in the style of the
                 official L2G scripts (never the official code itself)
    evaluator, export, crf, train_step, scale, e2e
                 one module per item of the benchmark, each with run(ctx) -> result dict
    report       the markdown table
    peak_rss     runs one command as its only child and reports its peak resident memory
"""
