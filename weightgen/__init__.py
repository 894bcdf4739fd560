"""weightgen: generate neural-network weights from text.

    import weightgen
    module = weightgen.load_model("sample.safetensors")   # any checkpoint weightgen wrote
"""

from weightgen.checkpoint import load_model, load_state_dict, save_model
from weightgen.specs import ArchSpec, ParamLayout
from weightgen.tasks import TaskSpec, get_task

__version__ = "0.1.0"
__all__ = ["ArchSpec", "ParamLayout", "TaskSpec", "get_task", "load_model", "load_state_dict", "save_model"]
