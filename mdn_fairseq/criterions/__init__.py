from .kd_cross_entropy import KDCrossEntropyCriterion, kd_loss

__all__ = ["KDCrossEntropyCriterion", "kd_loss"]
