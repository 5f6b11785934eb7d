"""Efficiency benchmark: parameters, MACs/FLOPs, latency, throughput, training speed and
peak memory of standard vs depthwise-separable convolutions, side by side.

``quick_inference_profile`` is the cheap entry point for other code (the trainer's metrics.json);
``run_bench`` and the ``dsconv-bench`` CLI run the full configured suite.
"""

from dsconv.benchmark.measure import Setting, TimingStats, count_flops, quick_inference_profile, time_callable

__all__ = ["Setting", "TimingStats", "count_flops", "quick_inference_profile", "time_callable"]
