//! Training data and (with the adapters issue) the training loop.

pub mod data;
