"""Per-class retrieval metrics: one row per class of the queries, as ``per_class.csv``."""
import math
from typing import Sequence

import torch

from metric.retrieval import class_means, per_query_metrics


def per_class_csv(query: torch.Tensor, query_labels: torch.Tensor, gallery: torch.Tensor | None,
                  gallery_labels: torch.Tensor | None, ks: Sequence[int], map_r: bool,
                  own: torch.Tensor | None = None) -> str:
    """CSV text ``label,queries,Recall@K...[,MAP@R,R-Precision]``, percent, one row per query label (ascending).

    The arguments are those of ``metric.retrieval.retrieval_metrics`` (``map_r``
    adds the last two columns; ``own``: each query's own gallery item). A class's value is the mean over its queries;
    MAP@R and R-Precision over those with positives, empty when it has none.
    """
    ks = list(ks)
    outcome = per_query_metrics(query, query_labels, gallery, gallery_labels, ks, map_r, own=own)
    classes, _, queries = class_means(outcome.positives.double(), query_labels)
    columns = [class_means(outcome.hits[:, i].double(), query_labels)[1] for i in range(len(ks))]
    header = ["label", "queries"] + [f"Recall@{k}" for k in ks]
    if map_r:
        counted = outcome.positives > 0
        columns += [class_means(outcome.ap, query_labels, counted)[1],
                    class_means(outcome.r_precision, query_labels, counted)[1]]
        header += ["MAP@R", "R-Precision"]
    lines = [",".join(header)]
    for row, (label, n) in enumerate(zip(classes.tolist(), queries.tolist())):
        values = [float(c[row]) for c in columns]
        lines.append(",".join([str(label), str(n)] + ["" if math.isnan(v) else f"{100.0 * v:.4f}" for v in values]))
    return "\n".join(lines) + "\n"
