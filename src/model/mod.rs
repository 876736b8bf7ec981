//! The decoder on burn, generic over the backend through burn's runtime
//! [`Device`](burn::tensor::Device): one config-driven forward pass ([`decoder`]) for every
//! supported architecture, whose differences live in [`arch`] and [`config`].

pub mod arch;
pub mod attention;
pub mod config;
pub mod decoder;
pub mod generate;
pub mod linear;
pub mod loader;
pub mod loss;
pub mod roles;
pub mod vocab;
pub mod weights;

/// Errors raised while running a model (not while loading it: see [`crate::io::LoadError`]).
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A token id does not exist in the vocabulary.
    #[error("token id {id} is outside the vocabulary (size {vocab})")]
    TokenOutOfRange {
        /// Offending id.
        id: i64,
        /// Vocabulary size.
        vocab: usize,
    },
    /// A batch row has no labelled position, so the loss is undefined.
    #[error("no labelled tokens: every label is -100 (or sequences are 1 token long)")]
    NoLabels,
    /// Reading a tensor back from the device failed.
    #[error("device readback failed: {0}")]
    Readback(String),
    /// Shapes of inputs do not fit together.
    #[error("{0}")]
    Input(String),
}

/// Read a float tensor back to the host without blocking (works in a browser too).
pub async fn read_f32<const D: usize>(t: burn::tensor::Tensor<D>) -> Result<Vec<f32>, ModelError> {
    let data = t
        .into_data_async()
        .await
        .map_err(|e| ModelError::Readback(format!("{e:?}")))?;
    data.convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| ModelError::Readback(format!("{e:?}")))
}
