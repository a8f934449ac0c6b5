"""Campaign reports: the per-cycle table, plots a person would rather look at, and an HTML page.

Plots (PNG): cumulative hits and hit rate against high-fidelity calls; divergence against the true
low-vs-high error of what was validated; survival through the funnel per cycle; and, for generative
campaigns, hull diagrams of the chemical systems where hits were found (seed 000 Fig. 11): the hull
at the campaign's fidelity from every formation energy in the store, with the stored phases and the
campaign's candidates marked. The HTML page embeds them with the table, so one file can be mailed
or opened from a cluster.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from qadb.campaign import state
from qadb.store.documents import CampaignDoc

if TYPE_CHECKING:
    from qadb.chem import PhaseHull

COLUMNS = ("cycle", "strategy", "generated", "passed_funnel", "passed_target_filter", "selected", "validated",
           "failed", "hits", "budget_spent", "cumulative_hits")


@dataclass
class Report:
    campaign: str
    rows: list[dict]
    summary: dict
    files: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"campaign": self.campaign, "summary": self.summary, "cycles": self.rows, "files": self.files}


def table_rows(cid: str) -> list[dict]:
    rows, cum, spent = [], 0, 0.0
    for c in state.cycles(cid):
        cum += len(c.hits)
        spent += c.budget_spent or 0.0
        n = c.counts
        rows.append({"cycle": c.index, "strategy": n.get("strategy", ""), "generated": n.get("generated", 0),
                     "passed_funnel": n.get("passed_funnel", 0), "passed_target_filter": n.get("passed_target_filter", 0),
                     "selected": len(c.selected), "validated": len(c.labels), "failed": len(c.failed),
                     "hits": len(c.hits), "budget_spent": spent, "cumulative_hits": cum})
    return rows


def _errors(cid: str) -> tuple[np.ndarray, np.ndarray]:
    """(divergence, |high − low|) for every validated candidate with a low-fidelity value."""
    d, err = [], []
    for c in state.cycles(cid):
        for k, y in c.labels.items():
            p = c.predictions.get(k, {})
            if p.get("D") is not None and p.get("y_low") is not None:
                d.append(abs(p["D"]))
                err.append(abs(y - p["y_low"]))
    return np.array(d), np.array(err)


def _plots(cid: str, rows: list[dict], folder: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = {}
    calls = np.cumsum([r["validated"] + r["failed"] for r in rows])
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
    ax[0].plot(calls, [r["cumulative_hits"] for r in rows], "o-")
    ax[0].set(xlabel="high-fidelity calls", ylabel="cumulative hits", title="discoveries")
    rate = [r["hits"] / max(r["validated"] + r["failed"], 1) for r in rows]
    ax[1].bar([r["cycle"] for r in rows], rate)
    ax[1].set(xlabel="cycle", ylabel="hit rate", title="hit rate per cycle", ylim=(0, 1))
    fig.tight_layout()
    files["hits"] = str(folder / "hits.png")
    fig.savefig(files["hits"], dpi=110)
    plt.close(fig)

    d, err = _errors(cid)
    if len(d) >= 3:
        fig, ax = plt.subplots(figsize=(4.2, 3.6))
        ax.scatter(d, err, s=12, alpha=0.7)
        r2 = np.corrcoef(d, err)[0, 1] ** 2 if np.std(d) > 0 and np.std(err) > 0 else float("nan")
        ax.set(xlabel="divergence D (predicted)", ylabel="|high − low| (true)", title=f"divergence vs true error, R²={r2:.2f}")
        fig.tight_layout()
        files["divergence"] = str(folder / "divergence.png")
        fig.savefig(files["divergence"], dpi=110)
        plt.close(fig)

    stages = ("generated", "passed_funnel", "passed_target_filter", "selected", "validated", "hits")
    fig, ax = plt.subplots(figsize=(6, 3.4))
    totals = [sum(r[s] for r in rows) for s in stages]
    ax.bar(range(len(stages)), np.maximum(totals, 0.8), log=True)
    ax.set_xticks(range(len(stages)), [s.replace("_", " ") for s in stages], rotation=25, ha="right")
    ax.set(ylabel="candidates (all cycles)", title="funnel survival")
    fig.tight_layout()
    files["funnel"] = str(folder / "funnel.png")
    fig.savefig(files["funnel"], dpi=110)
    plt.close(fig)
    return files


MAX_HULL_SYSTEMS = 4  # hull diagrams per report: the systems with the most hits


@dataclass
class HullSystem:
    """One chemical system at one fidelity where the campaign found hits: the ids of the structures
    carrying its labels there (a relaxed child for MLIP labels), and which of them are hits."""

    chemsys: str
    fidelity: str
    candidates: set[str] = field(default_factory=set)
    hits: set[str] = field(default_factory=set)


def hit_systems(cid: str) -> list[HullSystem]:
    """Systems with hits, most hits first: each labelled candidate is traced to the stored
    formation-energy label holding the value the campaign recorded (its fidelity and chemsys)."""
    from qadb.store.documents import LabelDoc

    values, hit_ids = {}, set()
    for c in state.cycles(cid):
        values.update({state.unkey(k): float(v) for k, v in c.labels.items()})
        hit_ids.update(c.hits)
    if not hit_ids:
        return []
    ids = sorted(values)
    labels = LabelDoc._get_collection()
    # the whole origin: nx-27017 returns no origin.parents for a dotted projection
    fields = {"structure": 1, "chemsys": 1, "fidelity": 1, "value": 1, "origin": 1}
    query = {"property": "formation_energy_per_atom", "status": "ok"}
    found = [*labels.find({**query, "structure": {"$in": ids}}, fields),  # DFT labels sit on the candidate
             *labels.find({**query, "origin.parents": {"$in": ids}}, fields)]  # MLIP labels on its relaxed child
    systems: dict[tuple[str, str], HullSystem] = {}
    for lab in found:
        for cand in {lab["structure"], *(lab.get("origin") or {}).get("parents", [])} & set(values):
            if abs(lab["value"] - values[cand]) <= 1e-6 * max(1.0, abs(values[cand])):
                where = (lab["chemsys"], lab["fidelity"])
                system = systems.setdefault(where, HullSystem(*where))
                system.candidates.add(lab["structure"])
                if cand in hit_ids:
                    system.hits.add(lab["structure"])
    ranked = [s for s in systems.values() if s.hits]
    return sorted(ranked, key=lambda s: (-len(s.hits), s.chemsys, s.fidelity))


def hull_figure(hull: PhaseHull, path: str | Path, *, candidates: set[str] = frozenset(),
                hits: set[str] = frozenset(), title: str | None = None) -> str:
    """Draw a binary (E_f against composition, hull line) or ternary (composition triangle, tie lines)
    hull; stored phases grey, candidates blue, hits red stars, phases on the hull outlined in black."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from pymatgen.core import Composition

    from qadb.chem._hull import REF_PREFIX

    n = len(hull.elements)
    if n not in (2, 3):
        raise ValueError(f"hull diagrams are drawn for binary and ternary systems, not {hull.chemsys}")
    entries = list(hull.entries)
    frac = np.array([hull.fractions(e.composition) for e in entries])
    energy = np.array([e.energy_per_atom for e in entries])
    e_above = energy - hull.hull_energies(frac)[0]
    on_hull = set(hull.facets.ravel().tolist())
    if n == 2:
        xy = np.column_stack([frac[:, 1], energy])
    else:
        xy = np.column_stack([frac[:, 1] + frac[:, 2] / 2, frac[:, 2] * np.sqrt(3) / 2])
    fig, ax = plt.subplots(figsize=(5.6, 4.4))
    for facet in hull.facets:
        edges = [(facet[0], facet[1])] if n == 2 else [(facet[0], facet[1]), (facet[1], facet[2]), (facet[0], facet[2])]
        for a, b in edges:
            ax.plot(xy[[a, b], 0], xy[[a, b], 1], "-", color="0.35", lw=1, zorder=1)
    kinds = [("hit" if e.id in hits else "candidate" if e.id in candidates else "stored") for e in entries]
    styles = {"stored": dict(marker="o", s=22, c="0.6", label="stored phases"),
              "candidate": dict(marker="s", s=34, c="tab:blue", label="campaign candidates"),
              "hit": dict(marker="*", s=120, c="tab:red", label="campaign hits")}
    for kind, style in styles.items():
        rows = [i for i, k in enumerate(kinds) if k == kind and not entries[i].id.startswith(REF_PREFIX)]
        if rows:
            ax.scatter(xy[rows, 0], xy[rows, 1], zorder=3, edgecolors=["k" if i in on_hull else "none" for i in rows],
                       **style)
    for i, e in enumerate(entries):
        if i in on_hull or kinds[i] == "hit":
            name = e.id[len(REF_PREFIX):] if e.id.startswith(REF_PREFIX) else Composition(e.composition).reduced_formula
            note = "" if i in on_hull else f" (+{1000 * e_above[i]:.0f} meV)"
            ax.annotate(name + note, xy[i], textcoords="offset points", xytext=(4, 4), fontsize=7)
    if n == 2:
        ax.axhline(0, color="0.8", lw=0.6, zorder=0)
        ax.set(xlabel=f"x in {hull.elements[0]}$_{{1-x}}${hull.elements[1]}$_x$",
               ylabel=f"formation energy (eV/atom, {hull.fidelity})")
    else:
        corners = np.array([[0, 0], [1, 0], [0.5, np.sqrt(3) / 2], [0, 0]])
        ax.plot(corners[:, 0], corners[:, 1], "-", color="0.2", lw=1)
        ax.set_aspect("equal")
        ax.axis("off")
    ax.set_title(title or f"{hull.chemsys} hull at {hull.fidelity}")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def _hull_plots(cid: str, folder: Path) -> dict[str, str]:
    """Hull diagrams of the binary and ternary systems with the most hits (at most MAX_HULL_SYSTEMS)."""
    from qadb.chem import build_hull
    from qadb.fidelity import slug
    from qadb.workflows.hull import hull_entries

    files = {}
    drawable = [s for s in hit_systems(cid) if len(s.chemsys.split("-")) in (2, 3)]
    for system in drawable[:MAX_HULL_SYSTEMS]:
        hull = build_hull(hull_entries(system.chemsys, system.fidelity), elements=system.chemsys.split("-"),
                          fidelity=system.fidelity)
        name = f"hull_{system.chemsys}_{slug(system.fidelity)}.png"
        files[f"hull {system.chemsys} ({system.fidelity})"] = hull_figure(
            hull, folder / name, candidates=system.candidates, hits=system.hits,
            title=f"{system.chemsys} at {system.fidelity}: {len(system.hits)} hit(s)")
    return files


def _html(rep: Report, folder: Path) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r[c] if not isinstance(r[c], float) else f'{r[c]:g}'))}</td>"
                                    for c in COLUMNS) + "</tr>" for r in rep.rows)
    imgs = "".join(
        f'<figure><img src="data:image/png;base64,{base64.b64encode(Path(p).read_bytes()).decode()}"/>'
        f"<figcaption>{html.escape(k)}</figcaption></figure>" for k, p in rep.files.items() if p.endswith(".png"))
    page = (f"<!doctype html><meta charset=utf-8><title>{html.escape(rep.campaign)}</title>"
            f"<style>body{{font-family:sans-serif}}td,th{{padding:2px 8px;text-align:right}}</style>"
            f"<h1>Campaign {html.escape(rep.campaign)}</h1><pre>{html.escape(json.dumps(rep.summary, indent=1))}</pre>"
            f"<table><tr>{head}</tr>{body}</table>{imgs}")
    path = folder / "report.html"
    path.write_text(page)
    return str(path)


def build_report(doc: CampaignDoc, out_dir: str | Path | None = None) -> Report:
    from qadb.campaign.engine import summary

    rows = table_rows(doc.id)
    summ = {"state": doc.state, "stop_reason": doc.stop_reason, "kind": doc.kind, **summary(doc.id)}
    rep = Report(doc.id, rows, summ)
    if out_dir is not None and rows:
        folder = Path(out_dir)
        folder.mkdir(parents=True, exist_ok=True)
        rep.files = _plots(doc.id, rows, folder)
        if doc.kind != "replay":  # replay candidates are dataset rows, not stored structures
            rep.files.update(_hull_plots(doc.id, folder))
        rep.files["html"] = _html(rep, folder)
        (folder / "report.json").write_text(json.dumps(rep.as_dict(), indent=1, default=str))
        rep.files["json"] = str(folder / "report.json")
    return rep
