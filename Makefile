# The two commands of the README, plus the benchmarks. Each target sets up what it needs.
.PHONY: demo test bench venv

venv:
	@bash .ci/setup.sh

demo: venv
	.venv/bin/bevt demo

test: venv
	.venv/bin/python -m pytest

bench: venv
	.venv/bin/python tests/benchmarks/bench_data.py
