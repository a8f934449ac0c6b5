"""Schemas stay in step with the code; the CLI gives one-line errors and non-zero exits."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema

from qadb.store import schemas
from qadb.store.documents import StructureDoc
from tests.store.helpers import SAMPLES, ingest_samples

ROOT = Path(__file__).resolve().parents[2]


def test_checked_in_schemas_match_the_code():
    for name, schema in schemas.all_schemas().items():
        path = ROOT / "schemas" / name
        assert path.exists(), f"{name} missing: run `qadb schemas`"
        assert path.read_text() == schemas.render(schema), f"{name} drifted from the code: run `qadb schemas`"


def test_stored_documents_validate_against_their_schema(store):
    ingest_samples(store)
    schema = json.loads((ROOT / "schemas" / "structures.schema.json").read_text())
    for doc in StructureDoc._get_collection().find({}):
        doc = json.loads(json.dumps(doc, default=str))
        jsonschema.validate(doc, schema)


def _qadb(*args, home):
    env = {**os.environ, "QADB_HOME": str(home)}
    env.pop("QADB_MONGO_URI", None)
    return subprocess.run([sys.executable, "-m", "qadb.cli.__main__", *args], capture_output=True, text=True, env=env, timeout=300)


def test_cli_ingest_query_export(tmp_path):
    res = _qadb("ingest", *map(str, sorted(SAMPLES.glob("*.cif"))), home=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "5 new structures" in res.stderr
    res = _qadb("query", "--elements", "O", "--output", "jsonl", home=tmp_path)
    assert res.returncode == 0 and sorted(json.loads(line)["formula_pretty"] for line in res.stdout.splitlines()) == ["MgO", "SrTiO3", "TiO2"]
    res = _qadb("export", "--formula", "Si", "-o", str(tmp_path / "si.json"), home=tmp_path)
    assert res.returncode == 0 and json.loads((tmp_path / "si.json").read_text())["data"][0]["formula_pretty"] == "Si"
    res = _qadb("stats", "--json", home=tmp_path)
    assert json.loads(res.stdout)["collections"]["structures"] == 5


def test_cli_bad_input_is_one_line_nonzero_and_changes_nothing(tmp_path):
    _qadb("ingest", str(SAMPLES / "Si.cif"), home=tmp_path)
    bad = tmp_path / "broken.cif"
    bad.write_text("data_x\nnot a cif at all\n")
    res = _qadb("ingest", str(SAMPLES / "NaCl.cif"), str(bad), home=tmp_path)
    assert res.returncode != 0
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "broken.cif" in lines[0]
    res = _qadb("stats", "--json", home=tmp_path)
    assert json.loads(res.stdout)["collections"]["structures"] == 1
    res = _qadb("query", "--range", "1:2", home=tmp_path)
    assert res.returncode != 0 and "needs --property" in res.stderr
    res = _qadb("--store", "mongodb://127.0.0.1:1/x", "stats", home=tmp_path)
    assert res.returncode == 3 and res.stderr.startswith("error: cannot reach MongoDB")
    (tmp_path / "config.yaml").write_text("mongo_uri: [unclosed\n")
    res = _qadb("stats", home=tmp_path)
    assert res.returncode != 0 and "config.yaml" in res.stderr and "not valid YAML" in res.stderr
