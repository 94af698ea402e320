"""Online choice of a local basis from the classifier data a ROM file keeps (no pickles)."""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import numpy as np


def local_basis_picker(path: str | os.PathLike, comm: Any) -> Callable[[Mapping[str, Any]], int] | None:
    """A function ``params -> local model index`` from the ROM file's classifier (None without
    local bases). The classifier is refitted from the stored training parameters, labels and
    medoids (nearest medoid, or k-NN), identically on every rank."""
    from ddrom.reduction.clustering import KNNClassifier, NearestMedoidClassifier
    from ddrom.rom.model import load_classifier

    data = load_classifier(path, comm)
    if not data:
        return None
    # numeric parameters only: a file parameter (a path) is not a coordinate
    names = sorted(n for n, v in data["params"][0].items() if not isinstance(v, str))
    P = np.array([[p[n] for n in names] for p in data["params"]], dtype=float)
    labels = np.asarray(data["labels"])
    if data.get("method") == "knn":
        clf = KNNClassifier(n_neighbors=min(3, len(P))).fit(P, labels)
    else:
        clf = NearestMedoidClassifier().fit(P, data["medoids"], labels)
    return lambda params: int(clf.predict(np.array([[float(params[n]) for n in names]]))[0])
