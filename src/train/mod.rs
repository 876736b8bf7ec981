//! Training data and (with the adapters issue) the training loop.

pub mod data;
pub mod optim;
pub mod run;
pub mod session;
pub mod trainer;
