//! Solvers, guidance and pipelines. Solvers see a model only through a small trait.
