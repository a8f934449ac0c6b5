"""`qadb bench AREA [ARGS]`: runs bench/AREA.py of the checkout and passes its arguments and exit code through."""

from __future__ import annotations

import subprocess
import sys

import pytest

from qadb.cli.bench import BENCH_DIR, bench_areas


def _qadb(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qadb.cli", *args], capture_output=True, text=True, timeout=120)


def test_areas_are_the_bench_scripts():
    assert {"generator", "chem", "store"} <= set(bench_areas())
    assert "_sun" not in bench_areas() and (BENCH_DIR / "_sun.py").exists()


def test_bench_passes_arguments_and_exit_codes_through():
    ok = _qadb("bench", "generator", "--help")
    assert ok.returncode == 0 and "--funnel" in ok.stdout  # the script's own argparse help, not click's
    bad = _qadb("bench", "generator", "--no-such-option")
    assert bad.returncode == 2 and "unrecognized arguments" in bad.stderr


@pytest.mark.parametrize("area", ["nope", "_sun"])
def test_unknown_area_is_one_line(area):
    r = _qadb("bench", area)
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: unknown bench area"), r.stderr
