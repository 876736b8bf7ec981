//! Bytes in and out: safetensors, GGUF, HF config.json, tokenizers. Nothing here knows about
//! devices; nothing here touches the file system — files arrive through a [`FileSource`].

pub mod chat;
pub mod gguf;
pub mod gguf_adapter;
pub mod gguf_meta;
pub mod gguf_model;
pub mod gguf_write;
pub mod hf;
pub mod peft;
pub mod safetensors;
pub mod tokenizer;
pub mod trl_script;

use std::sync::Arc;

/// The bytes of one file, shared without copying (a memory map on desktop, a buffer on the web).
pub type Blob = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// Where model files come from: a folder on disk (desktop front ends) or files picked in a
/// browser. The core reads through this so it never calls `std::fs` itself.
pub trait FileSource {
    /// Read the file `name` (relative to the model root), or `None` when it does not exist.
    fn read(&self, name: &str) -> Result<Option<Blob>, LoadError>;
    /// The path shown to the user in error messages for `name`.
    fn display(&self, name: &str) -> String;
}

/// Every way loading a model, tokenizer or data file can fail. Each message names the file and
/// the problem on one line, so front ends can print it as is.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The OS refused a read.
    #[error("{file}: {cause}")]
    Os {
        /// File being read.
        file: String,
        /// The OS error.
        cause: std::io::Error,
    },
    /// A required file is absent.
    #[error("{file}: file not found")]
    Missing {
        /// The file that should exist.
        file: String,
    },
    /// A safetensors file could not be parsed (truncated, bad header, ...).
    #[error("{file}: not a valid safetensors file: {reason}")]
    Safetensors {
        /// File being parsed.
        file: String,
        /// What the parser said.
        reason: String,
    },
    /// A GGUF file could not be parsed.
    #[error("{file}: {cause}")]
    Gguf {
        /// File being parsed.
        file: String,
        /// What the GGUF reader said.
        cause: gguf::GgufError,
    },
    /// A JSON file (config, index, tokenizer) could not be parsed.
    #[error("{file}: invalid JSON: {cause}")]
    Json {
        /// File being parsed.
        file: String,
        /// What serde said.
        cause: serde_json::Error,
    },
    /// A model tensor that must exist is absent.
    #[error("{file}: missing tensor `{name}`")]
    MissingTensor {
        /// File (or folder) searched.
        file: String,
        /// HF name of the missing tensor.
        name: String,
    },
    /// A tensor has the wrong shape for the model config.
    #[error("{file}: tensor `{name}` has shape {got:?}, the config expects {want:?}")]
    Shape {
        /// File holding the tensor.
        file: String,
        /// HF name of the tensor.
        name: String,
        /// Shape found.
        got: Vec<usize>,
        /// Shape the config implies.
        want: Vec<usize>,
    },
    /// The model is not a supported architecture.
    #[error(
        "{file}: unsupported architecture `{arch}` (supported: {})",
        crate::model::arch::SUPPORTED
    )]
    Architecture {
        /// File declaring the architecture.
        file: String,
        /// Architecture found.
        arch: String,
    },
    /// Anything else, with the file and a human description.
    #[error("{file}: {msg}")]
    Invalid {
        /// File at fault.
        file: String,
        /// What is wrong.
        msg: String,
    },
}

impl LoadError {
    /// Shorthand for [`LoadError::Invalid`].
    pub fn invalid(file: impl Into<String>, msg: impl Into<String>) -> Self {
        Self::Invalid {
            file: file.into(),
            msg: msg.into(),
        }
    }
}

/// Refuse a file name taken from a model file (a shard of a sharded index, ...) unless it is a
/// plain relative path inside the model folder: not empty or absolute, no `..`, `.` or empty
/// component, no backslash, drive prefix (`C:`) or NUL. Returns what is wrong.
pub fn check_relative_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("is empty");
    }
    if name.starts_with('/') {
        return Err("is an absolute path");
    }
    if name.contains(['\\', ':', '\0']) {
        return Err("contains a backslash, a drive prefix or NUL");
    }
    if name.split('/').any(|c| matches!(c, "" | "." | "..")) {
        return Err("has a `..`, `.` or empty path component");
    }
    Ok(())
}

/// Read a required file from `src`, turning absence into [`LoadError::Missing`].
pub fn read_required(src: &dyn FileSource, name: &str) -> Result<Blob, LoadError> {
    src.read(name)?.ok_or_else(|| LoadError::Missing {
        file: src.display(name),
    })
}

/// Parse a JSON file from `src`, naming the file on failure.
pub fn read_json<T: serde::de::DeserializeOwned>(
    src: &dyn FileSource,
    name: &str,
) -> Result<T, LoadError> {
    let blob = read_required(src, name)?;
    serde_json::from_slice((*blob).as_ref()).map_err(|cause| LoadError::Json {
        file: src.display(name),
        cause,
    })
}
