"""Campaign reports: the per-cycle table, plots a person would rather look at, and an HTML page.

Plots (PNG): cumulative hits and hit rate against high-fidelity calls; divergence against the true
low-vs-high error of what was validated; survival through the funnel per cycle. The HTML page
embeds them with the table, so one file can be mailed or opened from a cluster.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qadb.campaign import state
from qadb.store.documents import CampaignDoc

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
        rep.files["html"] = _html(rep, folder)
        (folder / "report.json").write_text(json.dumps(rep.as_dict(), indent=1, default=str))
        rep.files["json"] = str(folder / "report.json")
    return rep
