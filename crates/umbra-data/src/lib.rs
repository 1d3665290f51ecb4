//! Datasets, transforms, seeded batching, image grids and 2-D plots.

pub mod plot;
