from .mdn import MDNConfig, MDNDecoder, MDNModel, check_mdn_args, fill_mdn_defaults

__all__ = ["MDNConfig", "MDNDecoder", "MDNModel", "check_mdn_args", "fill_mdn_defaults"]
