"""Defaults of the scoring-cost measurement read by both the config schema (`EvalConfig`) and the
profiler (`profiling.scoring_cost`). They live below both so that composing a config — and with it
`finealign --help`, `list` and shell completion — never imports torch."""

COST_BATCH = 64  # image queries scored in one call when batched throughput is measured
