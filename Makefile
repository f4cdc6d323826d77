# The two commands of the README, plus the benchmarks. Each target sets up what it needs.
.PHONY: demo test lint bench venv images test-images

venv:
	@bash .ci/setup.sh

demo: venv
	.venv/bin/bevt demo

test: lint
	.venv/bin/python -m pytest

# The house rules (pyproject.toml): imports flow one way (README: Layout), ruff's lint and format.
lint: venv
	.venv/bin/lint-imports
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

# The stage images (docker/): built with docker, or podman (installed when missing). Names and tags:
# bevt_core/images.py (BEVT_IMAGE_REGISTRY, BEVT_IMAGE_TAG). Seconds when nothing changed.
images:
	bash docker/build.sh

# Only the image smoke tests (tests/containers; `make test` runs them too).
test-images: venv
	.venv/bin/python -m pytest tests/containers

# Every benchmark; each writes JSON + Markdown to tests/benchmarks/results/. Without a GPU the
# model and tokenizer benchmarks run their reduced CPU variants (ratios only).
bench: venv
	.venv/bin/python -m tests.benchmarks.bench_data
	@if .venv/bin/python -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then \
		.venv/bin/python -m tests.benchmarks.bench_model && \
		.venv/bin/python -m tests.benchmarks.bench_tokenize && \
		.venv/bin/python -m tests.benchmarks.bench_train; \
	else \
		.venv/bin/python -m tests.benchmarks.bench_model --device cpu --quick && \
		.venv/bin/python -m tests.benchmarks.bench_tokenize --quick && \
		.venv/bin/python -m tests.benchmarks.bench_train --device cpu; \
	fi
	.venv/bin/python -m tests.benchmarks.bench_views
	.venv/bin/python -m tests.benchmarks.bench_cost
	.venv/bin/python -m tests.benchmarks.report

# A local Kubernetes cluster for the tests (tests/cluster.py): etcd, kube-apiserver, controller-manager,
# scheduler, kwok's fake GPU/CPU nodes, the Kubeflow training operator v1 (PyTorchJob) and Trainer v2
# with JobSet (TrainJob). Built from Go modules by k8s/cluster/build.sh into ~/.cache/bevt-cluster
# (the first build takes about 12 minutes on 2 cores, later ones seconds). Then:
# KUBECONFIG=work/cluster/kubeconfig .venv/bin/kubectl get nodes. `make cluster-down` stops every process.
.PHONY: cluster cluster-down
cluster: venv
	bash k8s/cluster/build.sh
	.venv/bin/python -m tests.cluster up

cluster-down:
	.venv/bin/python -m tests.cluster down
