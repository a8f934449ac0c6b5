"""Rebuild the shipped SPP table reproducibly: ``python -m qadb.chem.build_spp [--version V] [--split val]``.

Reads the staged MP-20 split in file order (the structures are the data; nothing random), and writes
``qadb/data/spp_<version>.{npz,json}``.
"""

from __future__ import annotations

import argparse

from qadb.chem._datasets import mp20_structures
from qadb.chem._spp import DEFAULT_VERSION, build_spp_table, spp_artifact_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default=DEFAULT_VERSION)
    parser.add_argument("--split", default="val", choices=("val", "test"))
    args = parser.parse_args(argv)
    _, structures = mp20_structures(args.split)
    table = build_spp_table(structures, args.version, f"MP-20 {args.split} ({len(structures)} structures)")
    path = spp_artifact_path(args.version)
    table.to_files(path)
    print(f"wrote {path}.npz/.json: {len(table.pairs)} pairs, threshold {table.threshold:.4f}")


if __name__ == "__main__":
    main()
