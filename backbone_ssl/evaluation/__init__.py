"""Evaluation of frozen encoders: features, cosine kNN (faiss), linear probe, report and plots."""

from backbone_ssl.evaluation.features import embed_dataset, embed_folder, extract_features
from backbone_ssl.evaluation.knn import (
    knn_classify,
    knn_neighbours,
    knn_scores,
    knn_search,
    l2_normalize,
)
from backbone_ssl.evaluation.labels import align_by_name
from backbone_ssl.evaluation.linear import linear_probe
from backbone_ssl.evaluation.plots import plot_embedding_2d, plot_retrieval_grid
from backbone_ssl.evaluation.protocol import (
    EvalSplits,
    evaluate_encoder,
    evaluate_splits,
    load_splits,
)
from backbone_ssl.evaluation.report import (
    encoder_report_block,
    format_table,
    merge_section,
    read_report,
    run_eval,
)

__all__ = [
    "EvalSplits",
    "align_by_name",
    "embed_dataset",
    "embed_folder",
    "encoder_report_block",
    "evaluate_encoder",
    "evaluate_splits",
    "extract_features",
    "format_table",
    "knn_classify",
    "knn_neighbours",
    "knn_scores",
    "knn_search",
    "l2_normalize",
    "linear_probe",
    "load_splits",
    "merge_section",
    "plot_embedding_2d",
    "plot_retrieval_grid",
    "read_report",
    "run_eval",
]
