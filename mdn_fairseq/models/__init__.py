from .mdn import MDNConfig, MDNDecoder, MDNModel, check_mdn_args, fill_mdn_defaults

__all__ = ["MDNConfig", "MDNDecoder", "MDNModel", "check_mdn_args", "fill_mdn_defaults"]
from . import aan, can, san  # noqa: E402,F401  (register the peers: AAN, CAN, SAN)
