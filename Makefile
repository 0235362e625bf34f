# The README's two commands: `make run` (the demo) and `make test` (everything CI runs).
CARGO ?= cargo

.PHONY: run demo-data demo-cli test test-kernels test-web screenshots models lint bench-nlu bench-load bench-score

models:
	$(CARGO) run --release -q -- models fetch
	$(CARGO) run --release -q -- models fetch multilingual-e5-small

# Demo: index the demo shop's FAQ, train its recommender, serve it (http://127.0.0.1:8080), in
# English and, for shoppers who write Chinese, in Chinese (prompts/zh.toml).
# The agent token below is for this local demo only; make your own with `shopdesk agent-token`.
DEMO_AGENT_TOKEN = shopdesk-demo-agent
DEMO_AGENT_SHA256 = f91aca9d6296e93d9f1bd9833aec7060dd45dce61e27e0e4f1e388462a3073aa
run: demo-data
	@echo "demo agent token: $(DEMO_AGENT_TOKEN)  (Authorization: Bearer $(DEMO_AGENT_TOKEN))"
	$(CARGO) run --release -q -- serve --multilingual --agent demo:$(DEMO_AGENT_SHA256)

demo-data: models
	$(CARGO) run --release -q -- index build --faq index/demo-faq.csv
	$(CARGO) run --release -q -- recommend train --interactions index/interactions.csv --catalog index/catalog.csv --no-loss

# The same demo shop from the command line: recommendations, answers, classification.
demo-cli: demo-data
	$(CARGO) run --release -q -- recommend for c0001 --in-stock
	$(CARGO) run --release -q -- recommend for --session jp-026 --in-stock
	$(CARGO) run --release -q -- ask "Hi, where is my order 4451-23? It has not arrived"
	$(CARGO) run --release -q -- ask "can I pay with paypal"
	$(CARGO) run --release -q -- ask "how do I send back a dress that doesn't fit"
	$(CARGO) run --release -q -- classify \
		"Hi, where is my order 4451-23?" \
		"I want to talk to a real person" \
		"This is the third time my refund is late, I am furious" \
		"How do I change my shipping address?" \
		"can I pay with paypal" \
		"the film was a dull mess"

test:
	$(CARGO) run -q -- models fetch
	$(CARGO) run -q -- models fetch multilingual-e5-small
	# Benches run once in smoke mode (tiny inputs) so they cannot rot; the tests come last so
	# that their summary closes the output.
	$(CARGO) test -q --benches
	$(MAKE) test-kernels
	$(CARGO) test --lib --bins --tests
	$(MAKE) test-web

# The SIMD kernels' numeric tests again on the paths this CPU would not pick by itself
# (SHOPDESK_KERNEL caps the dispatch; the plain run above takes the best, AVX-512 here).
KERNEL_TESTS = simd:: nlu::ops:: recommend::als:: recommend::model::
test-kernels:
	SHOPDESK_KERNEL=avx2 $(CARGO) test -q --lib -- $(KERNEL_TESTS)
	SHOPDESK_KERNEL=generic $(CARGO) test -q --lib -- $(KERNEL_TESTS)

# Browser tests of the widget, console and shop page: Playwright (npm) driving Debian's
# Chromium (`apt-get install chromium`), against the debug binary built by the tests above.
test-web:
	$(CARGO) build -q
	cd tests/web && npm ci --silent --no-audit --no-fund && npm test

# The README's screenshots, from the browser tests.
screenshots:
	SHOPDESK_SCREENSHOTS=$(CURDIR)/docs/img $(MAKE) test-web

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

# NLU speed beside the Python peers; writes docs/benchmarks.md figures to reports/.
bench-nlu:
	bash benches/run_nlu_bench.sh

# Batch scoring beside the Python peers (10,000 reviews); BIG=1 adds the 1,000,000-row RSS run.
bench-score:
	bash benches/run_score_bench.sh

# Chat server under load (N concurrent websocket sessions); figures for docs/benchmarks.md.
bench-load:
	$(CARGO) bench --bench load -- --sessions 100,1000 --messages 10 --think-ms 100-700
