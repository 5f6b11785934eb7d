"""Benchmark standard vs depthwise-separable convolutions. See conf/bench.yaml; e.g.
`python scripts/bench.py dtypes=[fp32] memory_formats=[nchw] compile=[false,true]`."""

from dsconv.benchmark.cli import main

if __name__ == "__main__":
    main()
