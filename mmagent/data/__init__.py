"""Data: tables (CSV/JSONL/Parquet/DataFrame), up-front row checks, dataset and collation."""

from mmagent.data.dataset import Collator, FeatureCache, MultimodalDataset, encode_target, fit_targets
from mmagent.data.tables import Table, as_table, read_table
from mmagent.data.validation import DataError, Problem, validate_table

__all__ = [
    "Collator",
    "DataError",
    "FeatureCache",
    "MultimodalDataset",
    "Problem",
    "Table",
    "as_table",
    "encode_target",
    "fit_targets",
    "read_table",
    "validate_table",
]
