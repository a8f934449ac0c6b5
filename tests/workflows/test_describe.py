"""Descriptors and validity flags from qadb.chem written onto structure documents (issue #3, store integration)."""

from qadb.chem import load_spp_table
from qadb.chem._describe import DESCRIBE_SCHEMA
from qadb.store.documents import StructureDoc
from qadb.workflows.describe import describe_structures, up_to_date
from tests.workflows.conftest import add, rocksalt, si2_compressed
from tests.workflows.test_errors_cli import _qadb


def test_describe_writes_descriptors_once_and_resumes(store):
    ids = add(store, rocksalt(5.64), si2_compressed())
    first = describe_structures(ids)
    assert (first.described, first.skipped, first.failed) == (2, 0, {})
    nacl = StructureDoc.objects(id=ids[0]).first()
    d = nacl.descriptors
    assert d["schema"] == DESCRIBE_SCHEMA and d["artifacts"]["spp_table"] == load_spp_table().version
    assert 0.3 < d["compactness"] < 1.0 and d["spacegroup"]["number"] == 225 and d["mled"] is None
    assert nacl.validity["valid_structure"] and nacl.validity["seed000_pass"]
    assert nacl.validity["validity"]["charge_neutrality"]["passed"]
    again = describe_structures(ids + ["qadb-missing"])  # up to date: nothing recomputed; a bad id is reported
    assert (again.described, again.skipped, list(again.failed)) == (0, 2, ["qadb-missing"])
    assert describe_structures(ids[:1], force=True).described == 1


def test_up_to_date_needs_schema_table_and_mled():
    d = {"schema": DESCRIBE_SCHEMA, "artifacts": {"spp_table": "v1"}, "mled": None}
    assert up_to_date(d, DESCRIBE_SCHEMA, "v1", with_mled=False)
    assert not up_to_date(d, DESCRIBE_SCHEMA, "v2", with_mled=False)
    assert not up_to_date(d, DESCRIBE_SCHEMA, "v1", with_mled=True)
    assert not up_to_date({}, DESCRIBE_SCHEMA, "v1", with_mled=False)


def test_cli_describe(store, store_uri, tmp_path):
    add(store, rocksalt(4.21, ("Mg", "O")))
    store.close()
    run = _qadb(tmp_path, "--store", store_uri, "describe", "--chemsys", "Mg-O")
    assert run.returncode == 0, run.stderr
    assert "described 1, already up to date 0, failed 0" in run.stdout + run.stderr
