//! Skiff's benchmarks (network datapath, control plane). Filled in by the benchmark work.
