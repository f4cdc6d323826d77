# The two commands of the README, plus the benchmarks. Each target sets up what it needs.
.PHONY: demo test bench venv

venv:
	@bash .ci/setup.sh

demo: venv
	.venv/bin/bevt demo

test: venv
	.venv/bin/python -m pytest

# Every benchmark; each writes JSON + Markdown to tests/benchmarks/results/. Without a GPU the
# model and tokenizer benchmarks run their reduced CPU variants (ratios only).
bench: venv
	.venv/bin/python tests/benchmarks/bench_data.py
	@if .venv/bin/python -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then \
		.venv/bin/python tests/benchmarks/bench_model.py && \
		.venv/bin/python tests/benchmarks/bench_tokenize.py && \
		.venv/bin/python tests/benchmarks/bench_train.py; \
	else \
		.venv/bin/python tests/benchmarks/bench_model.py --device cpu --quick && \
		.venv/bin/python tests/benchmarks/bench_tokenize.py --quick && \
		.venv/bin/python tests/benchmarks/bench_train.py --device cpu; \
	fi
