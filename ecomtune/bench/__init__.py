"""The compact benchmark suite's machinery: the runner, records, model judges, reports and the lmms-eval export
(`ecomtune bench`). The tasks themselves (prompts, parsers, scorers, metrics) are `ecomtune.tasks`.

The runner (which imports torch) is not imported here.
"""
