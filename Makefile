# vmdesk: `make run` and `make test` set up what is missing, then build and run.
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: run test setup ui build libvirt postgres remote-host os-image lint bench package clean

## Debian packages, the libvirt user, tauri-driver (idempotent, quick when done).
setup:
	@bash scripts/setup-system.sh

ui/node_modules/.package-lock.json: ui/package-lock.json
	cd ui && npm ci --no-audit --no-fund

## The webview's files (ui/dist), embedded into the binary at build time.
ui: setup ui/node_modules/.package-lock.json
	cd ui && npm run build

build: ui
	cargo build -p vmdesk

## tiny-linux: a small bootable image built from Debian packages (kernel + busybox).
os-image: setup
	@bash scripts/build-tiny-linux.sh target/os

## A libvirt daemon with the QEMU driver (root; no systemd needed).
libvirt: setup
	@bash scripts/libvirtd.sh start

## A throwaway PostgreSQL for the team-store tests (own cluster on 127.0.0.1:5544,
## in /run/vmdesk-postgres; settings in its `env` file; no systemd needed).
postgres: setup
	@bash scripts/postgres.sh start

## A second libvirt host for the remote-host tests: its own network namespace,
## an sshd inside it and a session libvirtd of the user vmdesk-remote, reached
## as qemu+ssh://vmdesk-remote@10.213.47.2/session (root; see the script).
remote-host: libvirt
	@bash scripts/remote-host.sh start

## Opens the desktop window on the default data dir, with a demo pool on first run.
run: build os-image
	@bash scripts/run.sh

## Every test: Rust (core, libvirt, whole-system on real QEMU) and the UI's Vitest.
test: build libvirt postgres remote-host os-image
	cargo test --workspace
	cd ui && npm test

lint: ui
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cd ui && npm run check

## Allocation on a file database; VM creation on the real QEMU host.
bench: build libvirt postgres remote-host os-image
	@bash scripts/setup-system.sh bench
	cargo bench -p vmdesk-core --bench allocation
	cargo bench -p vmdesk-core --bench vm_changes
	cargo bench -p vmdesk-postgres --bench allocation
	cargo bench -p vmdesk-tests --bench create
	cargo bench -p vmdesk-tests --bench drift
	cargo bench -p vmdesk-tests --bench azure_sync
	cargo bench -p vmdesk-tests --bench ssh_ready
	cargo bench -p vmdesk-tests --bench console
	cargo bench -p vmdesk-tests --bench bridge_cpu
	cargo bench -p vmdesk-tests --bench remote_console
	cd ui && npm run build
	cargo build --release -p vmdesk
	cargo bench -p vmdesk-tests --bench desktop

## A Debian package (target/debian/vmdesk_*.deb): the app and CLI, desktop entry, icons.
package: ui
	@command -v cargo-deb >/dev/null || cargo install cargo-deb --locked
	cargo deb -p vmdesk
	@ls -l target/debian/*.deb

clean:
	cargo clean
	rm -rf ui/dist ui/node_modules
