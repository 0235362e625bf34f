# The README's two commands: `make run` (the demo) and `make test` (everything CI runs).
CARGO ?= cargo

.PHONY: run test models lint bench-nlu

models:
	$(CARGO) run --release -q -- models fetch

# Demo: index the demo shop's FAQ, answer a few shopper questions, classify a few messages.
run: models
	$(CARGO) run --release -q -- index build --faq index/demo-faq.csv
	$(CARGO) run --release -q -- recommend train --interactions index/interactions.csv --catalog index/catalog.csv
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
	# Benches run once in smoke mode (tiny inputs) so they cannot rot; the tests come last so
	# that their summary closes the output.
	$(CARGO) test -q --benches
	$(CARGO) test --lib --bins --tests

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

# NLU speed beside the Python peers; writes docs/benchmarks.md figures to reports/.
bench-nlu:
	bash benches/run_nlu_bench.sh
