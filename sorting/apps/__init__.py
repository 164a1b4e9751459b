"""Applications above the library rooms: benchmarks and tools that may import serving and training."""
