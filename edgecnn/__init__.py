"""edgecnn: which architecture, at which precision, on which runtime, meets the latency budget."""
from edgecnn.errors import UserError
from edgecnn.layers import count_params
from edgecnn.registry import ModelConfig, create_model, get_config, list_models, register_model
from edgecnn.stats import count_macs

__version__ = "0.1.0"
ZOO_VERSION = "1"

__all__ = ["ModelConfig", "UserError", "ZOO_VERSION", "count_macs", "count_params", "create_model",
           "get_config", "list_models", "register_model", "__version__"]
