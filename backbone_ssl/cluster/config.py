"""``backbone-ssl cluster`` settings: dataclass defaults <- ``configs/cluster.yaml`` <- key=value
overrides (:func:`backbone_ssl.config.load_config`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from backbone_ssl.config import check_choice, check_positive
from backbone_ssl.errors import UserError

METHODS = ("rank_order", "leiden", "infomap", "hdbscan", "agglomerative")
GRAPH_INDEXES = ("auto", "flat", "ivf", "hnsw")


@dataclass
class GraphConfig:
    """kNN graph over L2-normalised embeddings (cosine similarity)."""

    k: int = 10  # neighbours per face (the face itself excluded)
    index: str = "auto"  # auto: flat up to exact_max, else approx | flat | ivf | hnsw
    exact_max: int = 200_000  # auto: exact search up to this many faces
    approx: str = "ivf"  # auto above exact_max: ivf | hnsw
    nprobe: int = 0  # ivf cells scanned (0: backbone_ssl.evaluation.knn.default_nprobe)
    hnsw_m: int = 32  # hnsw links per node
    hnsw_ef_search: int = 128  # hnsw search depth
    recall_sample: int = 1000  # approximate index: recall@k measured on this many faces
    seed: int = 0


@dataclass
class MethodsConfig:
    """Per-method parameters (see backbone_ssl/cluster/methods.py for the papers)."""

    min_sim: float = 0.5  # edges below this cosine similarity are dropped (leiden, infomap)
    rank_order_threshold: float = 1.6  # Otto et al. 2017: merge below this normalised distance
    rank_order_top: int = 0  # rank-order neighbour list length (0: graph.k)
    leiden_resolution: float = 1.0  # RBConfiguration resolution (1 = modularity)
    infomap_trials: int = 2
    hdbscan_min_cluster_size: int = 5
    hdbscan_min_samples: int = 0  # 0: graph.k // 2
    hdbscan_attach_noise: bool = True  # noise faces join their nearest neighbour's cluster
    agglomerative_linkage: str = "average"  # average | complete | single | ward
    agglomerative_distance: float = 0.6  # cosine-distance cut (ward: euclidean on unit vectors)


@dataclass
class ClusterConfig:
    """Everything ``backbone-ssl cluster`` uses; ``method`` is the default ``--method``."""

    method: str = "rank_order"  # one of METHODS, or "all"
    seed: int = 0
    batch_size: int = 128  # embedding batch
    num_workers: int = 0
    graph: GraphConfig = field(default_factory=GraphConfig)
    methods: MethodsConfig = field(default_factory=MethodsConfig)
    large_cluster: int = 8  # a contact sheet for every cluster at least this big
    max_sheets: int = 12  # at most this many cluster sheets (largest first)
    sheet_faces: int = 36  # faces per contact sheet
    confused_pairs: int = 8  # rows of the most-confused-pairs sheet
    cross_book_sim: float = 0.7  # --group-by book: link two casts above this centroid cosine

    def validate(self) -> None:
        for m in self.method_list():
            check_choice(m, METHODS, "method")
        check_choice(self.graph.index, GRAPH_INDEXES, "graph.index")
        check_choice(self.graph.approx, ("ivf", "hnsw"), "graph.approx")
        check_choice(self.methods.agglomerative_linkage,
                     ("average", "complete", "single", "ward"), "methods.agglomerative_linkage")
        for key in ("graph.k", "graph.exact_max", "graph.recall_sample", "batch_size",
                    "methods.hdbscan_min_cluster_size", "large_cluster", "sheet_faces"):
            obj = self
            for part in key.split("."):
                obj = getattr(obj, part)
            check_positive(obj, key)
        if not -1.0 <= self.methods.min_sim < 1.0:
            raise UserError(f"config key 'methods.min_sim' must be in [-1, 1), "
                            f"got {self.methods.min_sim}")

    def method_list(self) -> list[str]:
        """``method`` as a list (``all`` -> every method)."""
        return list(METHODS) if self.method == "all" else [self.method]
