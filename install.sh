#!/usr/bin/env bash
# Install qadb and everything its tests need on a fresh machine (CPU torch 2.13.0).
# matminer goes in without its dependencies: its pins would downgrade pandas, and qadb uses only
# its site fingerprints (for M_LED), which run on the versions installed here.
set -euo pipefail
cd "$(dirname "$0")"
python -m pip install -q --disable-pip-version-check -e ".[test]"
python -m pip install -q --disable-pip-version-check --no-deps "matminer==0.10.1"
