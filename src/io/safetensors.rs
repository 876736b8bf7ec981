//! HF safetensors in and out: f32 / f16 / bf16 tensors to host f32, and serialisation of named
//! f32 tensors (the caller writes the bytes atomically; the core never touches the disk).

use super::LoadError;
use crate::model::weights::{HostData, HostTensor, StoredType, TensorMeta};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use std::collections::BTreeMap;

/// Parse a safetensors blob, naming `file` in the error when it is truncated or malformed.
pub fn parse<'a>(bytes: &'a [u8], file: &str) -> Result<SafeTensors<'a>, LoadError> {
    SafeTensors::deserialize(bytes).map_err(|e| LoadError::Safetensors {
        file: file.to_string(),
        reason: e.to_string(),
    })
}

/// Refuse a dtype wgtune does not read as weights (only F32, F16 and BF16).
fn check_float(view: &TensorView<'_>, name: &str, file: &str) -> Result<(), LoadError> {
    match view.dtype() {
        Dtype::F32 | Dtype::F16 | Dtype::BF16 => Ok(()),
        other => Err(LoadError::invalid(
            file,
            format!("tensor `{name}` has dtype {other:?}; expected F32, F16 or BF16"),
        )),
    }
}

/// Shape, type and host size of one stored tensor as [`to_host`] would load it (f32), from the
/// header alone.
pub fn host_meta(view: &TensorView<'_>, name: &str, file: &str) -> Result<TensorMeta, LoadError> {
    check_float(view, name, file)?;
    let shape = view.shape().to_vec();
    // The safetensors parser checked the data length against the shape, so this cannot overflow.
    let bytes = shape.iter().product::<usize>() * 4;
    Ok(TensorMeta {
        shape,
        ty: StoredType::F32,
        bytes,
    })
}

/// Convert one stored tensor to a host tensor in f32 (f16 and bf16 are widened exactly).
pub fn to_host(view: &TensorView<'_>, name: &str, file: &str) -> Result<HostTensor, LoadError> {
    check_float(view, name, file)?;
    let bytes = view.data();
    let values: Vec<f32> = match view.dtype() {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
    };
    Ok(HostTensor {
        shape: view.shape().to_vec(),
        data: HostData::F32(values),
    })
}

/// One tensor to store: dtype, shape and little-endian bytes.
pub type RawTensor = (Dtype, Vec<usize>, Vec<u8>);

/// Serialise named tensors of any dtype into safetensors bytes, keys sorted.
pub fn serialize_raw(
    tensors: &BTreeMap<String, RawTensor>,
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<Vec<u8>, safetensors::SafeTensorError> {
    let views = tensors
        .iter()
        .map(|(k, (dtype, shape, bytes))| {
            Ok((k.clone(), TensorView::new(*dtype, shape.clone(), bytes)?))
        })
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    safetensors::serialize(views, metadata)
}

/// Serialise named f32 tensors (`(shape, values)`) into safetensors bytes, keys sorted.
pub fn serialize_f32(
    tensors: &BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<Vec<u8>, safetensors::SafeTensorError> {
    let raw = tensors
        .iter()
        .map(|(k, (shape, v))| {
            (
                k.clone(),
                (
                    Dtype::F32,
                    shape.clone(),
                    bytemuck::cast_slice::<f32, u8>(v).to_vec(),
                ),
            )
        })
        .collect();
    serialize_raw(&raw, metadata)
}
