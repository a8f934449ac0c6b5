"""Validator and Φ_Q commands: ``qadb train validator``, ``qadb train proxy``, ``qadb predict``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from qadb.cli.groups import cli, console, open_store, out, progress, train
from qadb.errors import CheckpointError, InputError


# ------------------------------------------------------------------ store helpers

def store_formation_records(ctx) -> list[dict]:
    """Formation-energy records (the `qadb.models.validator.data` record dicts) from the store.

    Level = the label's fidelity, except PBE+U labels from the FERE dataset, which form their own
    level ``PBE+U/FERE`` (uncorrected PBE+U, unlike MP's corrected values). Key = structure id."""
    from qadb.models.validator.data import LEVEL_FIDELITY
    from qadb.store import Query, find

    with open_store(ctx, read_only=True):
        docs = find(Query(property="formation_energy_per_atom"), with_structure=True)
    recs = []
    for d in docs:
        for lab in d.get("labels", []):
            if lab.get("property") != "formation_energy_per_atom" or lab.get("status", "ok") != "ok":
                continue
            fid = lab.get("fidelity")
            origin = lab.get("origin") or {}
            level = "PBE+U/FERE" if fid == "PBE+U" and "fere" in str(origin.get("dataset", "")).lower() else fid
            if level not in LEVEL_FIDELITY:
                continue
            recs.append({"key": f"{d['material_id']}:{level}", "structure": d["structure"], "level": level,
                         "value": float(lab["value"]), "formula": d.get("formula_pretty") or d.get("formula"),
                         "source": f"store:{origin.get('dataset') or origin.get('kind')}"})
    if not recs:
        raise InputError("the store holds no formation_energy_per_atom labels at a validator level "
                         "(ingest e.g. --dataset mp20-val --dataset fere first)")
    return recs


def _register(ctx, path: Path, name: str, kind: str, architecture: str, res: dict | None, extra: dict) -> str:
    from qadb.store import register_checkpoint

    res = res or {}
    with open_store(ctx) as store:
        doc = register_checkpoint(
            store, path, name=name, kind=kind, architecture=architecture,
            hyperparameters={"model": extra.get("config", {}), "train": extra.get("train_config", {})},
            training_set={"source": extra.get("source"), "data_hash": extra.get("data_hash"),
                          "counts": extra.get("counts")},
            metrics={k: v for k, v in (res.get("metrics") or extra.get("metrics") or {}).items()
                     if isinstance(v, (int, float))},
            parent=extra.get("parent"))
    return doc.id


def _checkpoint_file(ctx, ref: str | None, default: Path, tmp_name: str) -> Path:
    """A checkpoint path: a file, or a checkpoint id registered in the store (copied to a temp file)."""
    if ref is None:
        return default
    p = Path(ref)
    if p.exists():
        return p
    if "@" in ref:
        import tempfile

        from qadb.store import checkpoint_bytes

        with open_store(ctx, read_only=True) as store:
            data = checkpoint_bytes(store, ref)
        tmp = Path(tempfile.gettempdir()) / f"qadb-{tmp_name}-{ref.replace('/', '_')}.pt"
        tmp.write_bytes(data)
        return tmp
    raise CheckpointError(f"checkpoint not found: {ref} (neither a file nor a registered checkpoint id)")


# ------------------------------------------------------------------ qadb train validator / proxy

@train.command("validator")
@click.option("--data", "data_src", type=click.Choice(["staged", "store"]), default="staged", show_default=True,
              help="Training records: the staged datasets, or the formation-energy labels in the store.")
@click.option("--bundle", type=click.Path(path_type=Path), default=None,
              help="A pre-featurised bundle (python -m qadb.models.validator.data --bundle FILE) instead.")
@click.option("--hierarchy", default="full", show_default=True,
              help="Fidelity hierarchy: full, skip_metagga, direct, low_only.")
@click.option("--members", type=int, default=5, show_default=True)
@click.option("--steps", type=int, default=20000, show_default=True)
@click.option("--time-budget", type=float, default=None, help="Stop after this many seconds (schedule follows).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-root", type=int, default=None, help="Subsample the MP (root) level to this many rows.")
@click.option("--cache", type=click.Path(path_type=Path), default=None, help="Graph cache folder.")
@click.option("-o", "--checkpoint", type=click.Path(path_type=Path), default=None,
              help="Where to write the checkpoint (default: qadb/data/checkpoints/validator_mfennp.pt).")
@click.option("--state", type=click.Path(path_type=Path), default=None, help="Resumable state file.")
@click.option("--register/--no-register", default=True, show_default=True,
              help="Register the checkpoint in the store's GridFS with lineage.")
@click.option("--register-existing", type=click.Path(path_type=Path), default=None,
              help="Only register this already-trained checkpoint (e.g. one trained on the GPU machine).")
@click.option("--parent", default=None, help="Parent checkpoint id for the lineage.")
@click.option("--log", "log_path", type=click.Path(path_type=Path), default=None,
              help="Training log (JSON lines; default train_logs/validator.jsonl).")
@click.pass_context
def train_validator_cmd(ctx, data_src, bundle, hierarchy, members, steps, time_budget, device, seed, max_root, cache,
                        checkpoint, state, register, register_existing, parent, log_path):
    """Train the MF-ENNP deep ensemble and register its checkpoint in the store."""
    from qadb.models.validator import api as A

    if register_existing is not None:
        members_, cfg, extra = A.load_validator(register_existing)
        extra = dict(extra, config=cfg, source="file", parent=parent)
        cid = _register(ctx, register_existing, "validator", A.KIND, "MF-ENNP", None, extra)
        click.echo(f"registered {register_existing} as {cid}")
        return
    if members < 1 or steps < 1:
        raise InputError("--members and --steps must be positive")
    records = store_formation_records(ctx) if data_src == "store" and bundle is None else None
    ckpt = checkpoint or A.DEFAULT_CHECKPOINT
    res = A.train_validator(records, bundle=bundle, hierarchy=hierarchy, n_members=members, steps=steps,
                            time_budget_s=time_budget, seed=seed, device=device, checkpoint=ckpt, state_path=state,
                            cache=cache, max_root=max_root, verbose=console.is_terminal, run_name="cli_validator",
                            log=log_path or A.DEFAULT_LOG)
    m = res["metrics"]
    click.echo(json.dumps({k: round(v, 4) for k, v in m.items() if isinstance(v, float)}, indent=1))
    click.echo(f"checkpoint {ckpt} ({res.get('checkpoint_bytes', 0) / 1e6:.1f} MB)")
    if register:
        extra = {"config": res["config"], "train_config": res["train_config"], "data_hash": res["data_hash"],
                 "counts": res.get("counts"), "source": "bundle" if bundle else data_src, "parent": parent}
        click.echo(f"registered as {_register(ctx, ckpt, 'validator', A.KIND, 'MF-ENNP', res, extra)}")


@train.command("proxy")
@click.option("--steps", type=int, default=1500, show_default=True)
@click.option("--batch", type=int, default=64, show_default=True)
@click.option("--time-budget", type=float, default=None)
@click.option("--device", default="cpu", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--cache", type=click.Path(path_type=Path), default=None, help="Graph cache folder.")
@click.option("-o", "--checkpoint", type=click.Path(path_type=Path), default=None,
              help="Where to write the checkpoint (default: qadb/data/checkpoints/proxy_phiq.pt).")
@click.option("--register/--no-register", default=True, show_default=True)
@click.option("--register-existing", type=click.Path(path_type=Path), default=None,
              help="Only register this already-trained Φ_Q checkpoint.")
@click.option("--parent", default=None, help="Parent checkpoint id for the lineage.")
@click.option("--log", "log_path", type=click.Path(path_type=Path), default=None,
              help="Training log (JSON lines; default train_logs/proxy.jsonl).")
@click.pass_context
def train_proxy_cmd(ctx, steps, batch, time_budget, device, seed, cache, checkpoint, register, register_existing, parent,
                    log_path):
    """Train the Φ_Q band-gap/metallicity proxy on the staged MEGNet multi-fidelity gaps."""
    from qadb.models.proxy import api as P

    if register_existing is not None:
        _, cfg, extra = P.load_proxy(register_existing)
        cid = _register(ctx, register_existing, "proxy", P.KIND, "PhiQ", None,
                        dict(extra, config=cfg, source="file", parent=parent))
        click.echo(f"registered {register_existing} as {cid}")
        return
    if steps < 1 or batch < 2:
        raise InputError("--steps must be positive and --batch at least 2")
    ckpt = checkpoint or P.DEFAULT_CHECKPOINT
    res = P.train_proxy(steps=steps, batch=batch, seed=seed, checkpoint=ckpt, cache=cache, device=device,
                        time_budget_s=time_budget, verbose=console.is_terminal, log=log_path or P.DEFAULT_LOG)
    click.echo(json.dumps({k: round(v, 4) for k, v in res["metrics"].items()}, indent=1))
    if register:
        extra = {"config": res["config"], "data_hash": res["data_hash"], "counts": res.get("counts"),
                 "source": "staged", "parent": parent, "train_config": {"steps": steps, "batch": batch}}
        click.echo(f"registered as {_register(ctx, ckpt, 'proxy', P.KIND, 'PhiQ', res, extra)}")


@train.command("mlip-member")
@click.option("--member", default="chgnet", show_default=True, help="Which MLIP member (bundled models) to fit.")
@click.option("-o", "--out", type=click.Path(path_type=Path), default=None,
              help="Artifact path (default: qadb/data/checkpoints/validator_mlip_<member>.npz).")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="Validator checkpoint whose heads feed the member (default: bundled).")
@click.option("--n-mu", type=int, default=4000, show_default=True,
              help="MP PBE+U train+val rows for the MLIP chemical potentials.")
@click.option("--energy-cache", type=click.Path(path_type=Path), default=None, help="Folder caching MLIP energies.")
@click.option("--cache", type=click.Path(path_type=Path), default=None, help="Graph cache folder.")
def train_mlip_member_cmd(member, out, checkpoint, n_mu, energy_cache, cache):
    """Fit the MLIP low-fidelity member (CHGNet energies co-kriged with the MF-ENNP to experiment) on the
    staged EXP train+val rows; the design is chosen on val. Same as python -m qadb.models.validator.mlip_member."""
    from qadb.models.validator import mlip_member as MM

    if member not in MM.MEMBERS:
        raise InputError(f"unknown MLIP member {member!r}; known: {', '.join(MM.MEMBERS)}")
    if n_mu < 10:
        raise InputError("--n-mu must be at least 10")
    res = MM.build(out, member, n_mu, 0, checkpoint, energy_cache, cache, verbose=console.is_terminal)
    click.echo(json.dumps({k: res[k] for k in ("path", "bytes", "design", "gp", "rows")}, indent=1, default=float))


# ------------------------------------------------------------------ qadb predict

def _read_structure_file(path: Path):
    import warnings

    from pymatgen.core import Structure

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Structure.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 - one line naming the file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise InputError(f"{path}: not a readable structure file ({first})") from None


@cli.command()
@click.argument("targets", nargs=-1)
@click.option("--cif", "cifs", multiple=True, type=click.Path(path_type=Path),
              help="A structure file (CIF, POSCAR, ...); repeatable. Bare arguments that are files count too.")
@click.option("--checkpoint", default=None, help="Validator checkpoint file or registered id (default: bundled).")
@click.option("--proxy-checkpoint", default=None, help="Φ_Q checkpoint file or registered id (default: bundled).")
@click.option("--no-proxy", is_flag=True, help="Skip the Φ_Q descriptors.")
@click.option("--low-level", default=None, help="Head the divergence compares with (default: the checkpoint's).")
@click.option("--mlip-member", default=None,
              help="Also predict E_EXP with the MLIP low-fidelity member: 'chgnet' (bundled CHGNet models + "
                   "the MF-ENNP, co-kriged to experiment; structure only, ~25x slower) or a member .npz file.")
@click.option("--output", type=click.Choice(["table", "jsonl"]), default="table", show_default=True)
@click.option("--all-levels", is_flag=True, help="Table: show every fidelity level's energy.")
@click.pass_context
def predict(ctx, targets, cifs, checkpoint, proxy_checkpoint, no_proxy, low_level, mlip_member, output, all_levels):
    """Per-fidelity energies, E_MF, σ_MF, divergence D and q for stored structure ids or structure files."""
    from qadb.models.proxy.api import DEFAULT_CHECKPOINT as PROXY_DEFAULT
    from qadb.models.validator import api as A

    entries = [("file", Path(t)) if Path(t).exists() else ("id", t) for t in targets] + [("file", Path(p)) for p in cifs]
    docs = {}
    ids = [v for k, v in entries if k == "id"]
    if ids:
        from qadb.store import Query, find

        with open_store(ctx, read_only=True):
            docs = {d["material_id"]: d for d in find(Query(ids=list(ids)), with_structure=True)}
    names, structures = [], []
    for kind, v in entries:
        if kind == "file":
            if not v.exists():
                raise InputError(f"{v}: no such file")
            structures.append(_read_structure_file(v))
        else:
            if v not in docs:
                raise InputError(f"unknown structure id {v!r} (not in the store, and no such file)")
            from pymatgen.core import Structure

            structures.append(Structure.from_dict(docs[v]["structure"]))
        names.append(str(v))
    if not structures:
        raise InputError("nothing to predict: give stored structure ids or structure files (--cif FILE)")
    ckpt = _checkpoint_file(ctx, checkpoint, A.DEFAULT_CHECKPOINT, "validator")
    pckpt = False if no_proxy else _checkpoint_file(ctx, proxy_checkpoint, PROXY_DEFAULT, "proxy")
    if pckpt is not False and not Path(pckpt).exists():
        pckpt = False
    with progress() as bar:
        bar.add_task(f"predicting {len(structures)} structures", total=None)
        res = A.predict(structures, checkpoint=ckpt, proxy_checkpoint=pckpt, low_level=low_level,
                        mlip_member=mlip_member)
    rows = []
    for k, name in enumerate(names):
        row = {"id": name, "formula": structures[k].composition.reduced_formula,
               "energies": {l: float(res["energies"][l][k]) for l in res["levels"]},
               "sigmas": {l: float(res["sigmas"][l][k]) for l in res["levels"]},
               "low_level": res["low_level"], "E_PBE": float(res["E_PBE"][k]), "E_MF": float(res["E_MF"][k]),
               "sigma_MF": float(res["sigma_MF"][k]), "D_abs": float(res["D_abs"][k]),
               "D_rel": float(res["D_rel"][k]), "D_sgn": float(res["D_sgn"][k])}
        if "E_EXP_mlip" in res:
            row.update({"E_EXP_mlip": float(res["E_EXP_mlip"][k]), "sigma_EXP_mlip": float(res["sigma_EXP_mlip"][k]),
                        "E_mlip_low": dict(zip(res["mlip_fidelities"], [float(v) for v in res["E_mlip_low"][k]]))})
        if "q" in res:
            row["q"] = dict(zip(res["q_names"], [float(x) for x in res["q"][k]]))
        rows.append(row)
    if output == "jsonl":
        for r in rows:
            click.echo(json.dumps(r))
        return
    from rich.table import Table

    table = Table(title=f"MF-ENNP predictions (eV/atom; E_PBE = {res['low_level']} head)")
    cols = ["id", "formula"] + (list(res["levels"]) if all_levels else []) + ["E_PBE", "E_MF", "σ_MF", "D_abs", "D_rel", "D_sgn"]
    cols += ["E_EXP(MLIP)", "σ(MLIP)"] if "E_EXP_mlip" in res else []
    qn = res.get("q_names", [])
    for c in cols + qn:
        table.add_column(c, overflow="fold")
    for r in rows:
        vals = [r["id"], r["formula"]] + ([f"{r['energies'][l]:.3f}" for l in res["levels"]] if all_levels else [])
        vals += [f"{r[k]:.3f}" for k in ("E_PBE", "E_MF", "sigma_MF", "D_abs", "D_rel", "D_sgn")]
        vals += [f"{r[k]:.3f}" for k in ("E_EXP_mlip", "sigma_EXP_mlip") if k in r]
        vals += [f"{r['q'][n]:.2f}" for n in qn] if "q" in r else []
        table.add_row(*vals)
    out.print(table)
