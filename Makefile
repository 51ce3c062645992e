# The services build into bin/. `make run` and `make test` need PostgreSQL on
# 127.0.0.1:5432 (user postgres, trust auth) and RabbitMQ on 127.0.0.1:5672
# (guest/guest); both first run `make services`, which does nothing when the
# two answer, and otherwise starts them, installing them on Debian if missing.

SERVICES := orders invoices
GO       ?= go

.PHONY: build run test test-race test-short fuzz vet services jaeger bench chaos mutate clean kong-config up down lambda invoke infra-test

build: $(addprefix bin/,$(SERVICES))

bin/%: FORCE
	$(GO) build -trimpath -ldflags='-s -w' -o $@ ./functions/$*/cmd/$*

FORCE:

# Lambda: the same binaries, static for provided.al2023 on arm64. sam build
# calls build-<Function> with ARTIFACTS_DIR (BuildMethod makefile).
LAMBDA_BUILD := GOOS=linux GOARCH=arm64 CGO_ENABLED=0 $(GO) build -trimpath -tags lambda.norpc -ldflags='-s -w'

build-OrdersFunction:
	$(LAMBDA_BUILD) -o $(ARTIFACTS_DIR)/bootstrap ./functions/orders/cmd/orders

build-InvoicesFunction:
	$(LAMBDA_BUILD) -o $(ARTIFACTS_DIR)/bootstrap ./functions/invoices/cmd/invoices

# dist/orders.zip and dist/invoices.zip, ready to upload; prints their sizes.
lambda:
	@for svc in $(SERVICES); do \
		$(LAMBDA_BUILD) -o dist/$$svc/bootstrap ./functions/$$svc/cmd/$$svc && \
		$(GO) run ./local/lambdazip dist/$$svc.zip dist/$$svc/bootstrap || exit 1; \
	done
	@ls -l dist/*/bootstrap dist/*.zip | awk '{print $$5, $$9}'

bin/aws-lambda-rie:
	cd local/rie && $(GO) build -o ../../bin/aws-lambda-rie github.com/aws/aws-lambda-runtime-interface-emulator/cmd/aws-lambda-rie

# One Lambda invocation of a real binary under the Runtime Interface
# Emulator, against the local servers (sam local invoke without Docker):
#   make invoke FN=orders EVENT=local/events/orders/kong-create.json
invoke: bin/aws-lambda-rie services
	@test -n "$(FN)" -a -n "$(EVENT)" || { echo 'usage: make invoke FN=orders|invoices EVENT=local/events/...json' >&2; exit 2; }
	@$(MAKE) -s bin/$(FN)
	@$(GO) run ./local/invoke -rie bin/aws-lambda-rie -fn bin/$(FN) -event $(EVENT) $(INVOKE_FLAGS)

# Runs every service natively against the local servers, creating the
# databases when missing. Ctrl-C stops them all.
run: build services
	@./local/run.sh

# Every test, including those that talk to the real PostgreSQL and RabbitMQ.
test: services
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 20m ./...

# Every test with the race detector, the service binaries under test included.
test-race: services
	$(GO) test -race -count=1 -timeout 30m ./...

# The Pulumi program (infra/, a module of its own) under pulumi.WithMocks:
# no Pulumi CLI, no plugins, no AWS account. The first build compiles the
# AWS provider SDK: minutes and about 3 GB of memory.
infra-test:
	cd infra && $(GO) vet ./... && $(GO) test -count=1 ./...

# Unit tests only: skips what needs the servers.
test-short:
	$(GO) test -short ./...

fuzz:
	$(GO) test ./functions/orders -run '^$$' -fuzz FuzzDecodeCreateOrder -fuzztime 60s

# Benchmarks against the local servers; flags: make bench BENCH_FLAGS='-c 32 -t 10s -n 20000'
bench: build bin/aws-lambda-rie
	$(GO) run ./local/bench $(BENCH_FLAGS)

# Fault injection under load; stops and restarts the local RabbitMQ and
# PostgreSQL, so never part of make test. Flags: CHAOS_FLAGS='-rate 200 -pause 5s'
chaos: build
	$(GO) run ./local/chaos $(CHAOS_FLAGS)

# Plants known bugs one at a time in a scratch copy and runs the tests that
# must catch each; prints a table and fails when one survives. Slow, so not
# part of make test. Flags: MUTATE_FLAGS='-run relay'
mutate: services
	$(GO) run ./local/mutate $(MUTATE_FLAGS)

services:
	@./local/services.sh

# Jaeger all-in-one (UI http://127.0.0.1:16686, OTLP on 4317/4318), pinned in
# local/jaeger/go.mod. The first build takes about 15 minutes; then, in
# another terminal:
#   OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 OTEL_METRICS_EXPORTER=none make run
jaeger:
	cd local/jaeger && $(GO) tool jaeger

# Renders kong/kong.yml (the compose stack's gateway) from package kong;
# a test fails while the checked-in file is stale.
kong-config:
	$(GO) run ./kong/cmd/kong-config -o kong/kong.yml

# The whole stack in Docker: PostgreSQL, RabbitMQ, Jaeger, Kong on :8000 and
# both services built from the Dockerfile. Data survives down/up (named
# volumes); `docker compose -f local/compose.yaml down -v` forgets it.
up:
	docker compose -f local/compose.yaml up --build -d

down:
	docker compose -f local/compose.yaml down

clean:
	rm -rf bin dist
