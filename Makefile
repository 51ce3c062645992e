# The services build into bin/. `make run` and `make test` need PostgreSQL on
# 127.0.0.1:5432 (user postgres, trust auth) and RabbitMQ on 127.0.0.1:5672
# (guest/guest); `make services` starts or installs them on Debian.

SERVICES := orders invoices
GO       ?= go

.PHONY: build run test test-short fuzz vet services clean

build: $(addprefix bin/,$(SERVICES))

bin/%: FORCE
	$(GO) build -trimpath -ldflags='-s -w' -o $@ ./functions/$*

FORCE:

# Runs every service natively against the local servers, creating the
# databases when missing. Ctrl-C stops them all.
run: build
	@./local/run.sh

# Every test, including those that talk to the real PostgreSQL and RabbitMQ.
test:
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 20m ./...

# Unit tests only: skips what needs the servers.
test-short:
	$(GO) test -short ./...

fuzz:
	$(GO) test ./functions/orders -run '^$$' -fuzz FuzzDecodeCreateOrder -fuzztime 60s

services:
	@./local/services.sh

clean:
	rm -rf bin
