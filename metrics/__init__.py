"""Metrics: class safety and balance, distribution distances, FID, CLIP score, Q."""
from negguide.metrics.base import METRICS, MetricInfo, MetricValue

__all__ = ["METRICS", "MetricInfo", "MetricValue"]
