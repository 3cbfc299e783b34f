#!/usr/bin/env bash
# Build the deploy images with podman and run the compose stack from them (bench/images.py).
# Needs root (chroot, mount namespaces) and Debian's podman and mmdebstrap, which
# scripts/setup.sh installs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python bench/images.py "$@"
