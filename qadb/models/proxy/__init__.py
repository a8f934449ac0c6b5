"""Φ_Q quantum-descriptor proxy (band gaps at PBE/HSE06/GLLB-SC/SCAN + metallicity).

Public API: `train_proxy`, `predict_q`, `load_proxy` (imported lazily from `qadb.models.proxy.api`).
"""


def __getattr__(name):
    if name in {"train_proxy", "predict_q", "load_proxy", "staged_gap_records", "Q_NAMES"}:
        from qadb.models.proxy import api

        return getattr(api, name)
    raise AttributeError(name)
