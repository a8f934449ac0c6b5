"""Readers for the staged MP-20 split used as the reference set (read in place, never copied)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd
from pymatgen.core import Structure

from qadb.config import shared_data_dir
from qadb.errors import InputError

MP20_SPLITS = ("val", "test")


def mp20_path(split: str) -> Path:
    if split not in MP20_SPLITS:
        raise InputError(f"MP-20 split must be one of {', '.join(MP20_SPLITS)}, got {split!r}")
    path = shared_data_dir() / "mp_20_mattergen_cache" / f"{split}.csv.gz"
    if not path.exists():
        raise InputError(f"{path} not found: set QADB_SHARED_DATA to the staged data folder")
    return path


def mp20_rows(split: str, limit: int | None = None) -> pd.DataFrame:
    """The split's rows in file order (first `limit` rows when given)."""
    return pd.read_csv(mp20_path(split), nrows=limit)


def mp20_structures(split: str, limit: int | None = None) -> tuple[list[str], list[Structure]]:
    """(material ids, structures) of the first `limit` rows of an MP-20 split."""
    rows = mp20_rows(split, limit)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        structures = [Structure.from_str(cif, fmt="cif") for cif in rows["cif"]]
    return rows["material_id"].tolist(), structures
