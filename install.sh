#!/usr/bin/env bash
# Install qadb and everything its tests need on a fresh machine (CPU torch 2.13.0).
# Three packages go in without their dependencies because their metadata pins clash with the rest,
# while the code qadb uses runs on the versions installed here (tested):
#   matminer 0.10.1 (pins pandas < 3; qadb uses only its site fingerprints, for M_LED)
#   mace-torch 0.3.16 (pins e3nn 0.4.4; sevenn needs e3nn >= 0.5; MACE runs on e3nn 0.6)
#   atomate2 0.1.5 (pins pymongo <= 4.16; its VASP input sets work on pymongo 4.20)
set -euo pipefail
cd "$(dirname "$0")"
python -m pip install -q --disable-pip-version-check -e ".[test]"
PIP="python -m pip install -q --disable-pip-version-check"
$PIP --no-deps "matminer==0.10.1" "mace-torch==0.3.16" "atomate2==0.1.5"
# MLIPs with bundled weights, mace's and atomate2's own needs; torch stays at the CPU 2.13.0 pin
$PIP "torch==2.13.0" "chgnet==0.4.2" "sevenn==0.13.0" torch-ema prettytable torchmetrics python-hostlist \
    configargparse GitPython lmdb custodian "emmet-core==0.87.3"
