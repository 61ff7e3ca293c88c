//! The Mamba backbone and everything users run.
