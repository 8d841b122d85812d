"""The models: ResUNet30 + FiLM separator, Cnn14 query net, Cnn14_DecisionLevelMax SED; loaders; inference.

reference/SEMANTICS.md is the specification; DESIGN.md §5 says where each part lives.
"""

from harness.models.checkpoints import (
    export_checkpoint,
    file_sha256,
    load_checkpoint_state,
    load_query_net,
    load_sed,
    load_separator,
    load_separator_and_query_net,
)
from harness.models.panns import Cnn14, Cnn14DecisionLevelMax
from harness.models.resunet import ResUNet30
from harness.models.separator import embed, resolve_device, separate, separate_batch

__all__ = [
    "Cnn14",
    "Cnn14DecisionLevelMax",
    "ResUNet30",
    "embed",
    "export_checkpoint",
    "file_sha256",
    "load_checkpoint_state",
    "load_query_net",
    "load_sed",
    "load_separator",
    "load_separator_and_query_net",
    "resolve_device",
    "separate",
    "separate_batch",
]
