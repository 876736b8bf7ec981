//! GGUF v3 container writer, bytes out: metadata in the order given, then the tensor table, then
//! the tensor data, each piece padded to the alignment, as gguf-py's `GGUFWriter` lays it out.
//! Knows nothing about models; the reader in [`super::gguf`] parses what this writes.

use super::gguf::{DEFAULT_ALIGNMENT, GGUF_MAGIC, MetaValue};
use crate::quant::ggml::GgmlType;
use thiserror::Error;

/// The GGUF version written.
pub const GGUF_VERSION: u32 = 3;

/// ggml's `GGML_QNT_VERSION` (gguf-py's `GGML_QUANT_VERSION`), written as
/// `general.quantization_version` by every GGUF writer here.
pub const QUANT_VERSION: u32 = 2;

/// Reasons a GGUF file cannot be written.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum GgufWriteError {
    /// A metadata array whose elements do not share one type (GGUF arrays are homogeneous).
    #[error("GGUF metadata key {key}: array elements have different types")]
    MixedArray {
        /// The key of the array.
        key: String,
    },
    /// Tensor data whose length does not match its type and dimensions.
    #[error("GGUF tensor {name}: {got} data bytes, its type and shape need {want}")]
    DataLength {
        /// The tensor name.
        name: String,
        /// Bytes given.
        got: usize,
        /// Bytes the type and dims require.
        want: usize,
    },
}

/// One tensor to write.
#[derive(Debug, Clone, PartialEq)]
pub struct OutTensor {
    /// GGUF name (`blk.0.attn_q.weight.lora_a`).
    pub name: String,
    /// ggml dimensions, row length first (`ne`): a `[rows, cols]` matrix is `[cols, rows]`.
    pub dims: Vec<u64>,
    /// Storage type of `data`.
    pub ty: GgmlType,
    /// The encoded elements, little endian.
    pub data: Vec<u8>,
}

/// GGUF's type code of a metadata value.
fn type_code(v: &MetaValue) -> u32 {
    match v {
        MetaValue::U8(_) => 0,
        MetaValue::I8(_) => 1,
        MetaValue::U16(_) => 2,
        MetaValue::I16(_) => 3,
        MetaValue::U32(_) => 4,
        MetaValue::I32(_) => 5,
        MetaValue::F32(_) => 6,
        MetaValue::Bool(_) => 7,
        MetaValue::Str(_) => 8,
        MetaValue::Array(_) => 9,
        MetaValue::U64(_) => 10,
        MetaValue::I64(_) => 11,
        MetaValue::F64(_) => 12,
    }
}

/// Append a GGUF string (u64 length, UTF-8 bytes).
fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Append a value without its type code; `key` names it in errors.
fn put_value(out: &mut Vec<u8>, v: &MetaValue, key: &str) -> Result<(), GgufWriteError> {
    match v {
        MetaValue::U8(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Bool(x) => out.push(u8::from(*x)),
        MetaValue::Str(s) => put_str(out, s),
        MetaValue::Array(items) => {
            // An empty array is written with element type u8, as any type would do.
            let elem = items.first().map_or(0, type_code);
            if items.iter().any(|i| type_code(i) != elem) {
                return Err(GgufWriteError::MixedArray { key: key.into() });
            }
            out.extend_from_slice(&elem.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for i in items {
                put_value(out, i, key)?;
            }
        }
    }
    Ok(())
}

/// Zero bytes up to the next multiple of `align`.
fn pad(out: &mut Vec<u8>, align: usize) {
    out.resize(out.len().next_multiple_of(align), 0);
}

/// The bytes of a GGUF v3 file holding `metadata` (in this order) and `tensors` (in this order),
/// aligned to [`DEFAULT_ALIGNMENT`] (so no `general.alignment` key is needed).
pub fn write_gguf(
    metadata: &[(String, MetaValue)],
    tensors: &[OutTensor],
) -> Result<Vec<u8>, GgufWriteError> {
    let mut out = Vec::new();
    out.extend_from_slice(&GGUF_MAGIC);
    out.extend_from_slice(&GGUF_VERSION.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (key, v) in metadata {
        put_str(&mut out, key);
        out.extend_from_slice(&type_code(v).to_le_bytes());
        put_value(&mut out, v, key)?;
    }
    let mut offset = 0usize;
    for t in tensors {
        let rows: u64 = t.dims.iter().skip(1).product();
        let want = t
            .dims
            .first()
            .and_then(|&n| t.ty.row_bytes(n as usize).ok())
            .map_or(0, |r| r * rows as usize);
        if want != t.data.len() {
            return Err(GgufWriteError::DataLength {
                name: t.name.clone(),
                got: t.data.len(),
                want,
            });
        }
        put_str(&mut out, &t.name);
        out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&t.ty.id().to_le_bytes());
        out.extend_from_slice(&(offset as u64).to_le_bytes());
        offset += t.data.len().next_multiple_of(DEFAULT_ALIGNMENT);
    }
    pad(&mut out, DEFAULT_ALIGNMENT);
    for t in tensors {
        out.extend_from_slice(&t.data);
        pad(&mut out, DEFAULT_ALIGNMENT);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::gguf::Gguf;

    /// What the writer writes, the reader reads back: keys in order with their types, tensor
    /// names, dims, types, offsets on the alignment and the data bytes.
    #[test]
    fn round_trip_through_the_reader() {
        let meta = vec![
            (
                "general.architecture".to_string(),
                MetaValue::Str("llama".into()),
            ),
            ("adapter.lora.alpha".to_string(), MetaValue::F32(8.0)),
            ("a.u32".to_string(), MetaValue::U32(7)),
            (
                "a.list".to_string(),
                MetaValue::Array(vec![MetaValue::I32(-1), MetaValue::I32(2)]),
            ),
        ];
        let f32s: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let tensors = vec![
            OutTensor {
                name: "t.a".into(),
                dims: vec![3, 2],
                ty: GgmlType::F32,
                data: f32s.clone(),
            },
            OutTensor {
                name: "t.b".into(),
                dims: vec![2],
                ty: GgmlType::F16,
                data: vec![0, 0x3c, 0, 0xc0],
            },
        ];
        let bytes = write_gguf(&meta, &tensors).unwrap();
        let g = Gguf::parse(&bytes).unwrap();
        assert_eq!(g.version, GGUF_VERSION);
        assert_eq!(g.metadata.len(), meta.len());
        for (k, v) in &meta {
            assert_eq!(g.get(k), Some(v), "{k}");
        }
        for t in &tensors {
            let info = g.tensor(&t.name).unwrap();
            assert_eq!(info.dims, t.dims);
            assert_eq!(info.ty().unwrap(), t.ty);
            assert_eq!(info.offset % DEFAULT_ALIGNMENT as u64, 0);
            assert_eq!(g.tensor_bytes(&bytes, info).unwrap(), &t.data[..]);
        }
    }

    /// Typed errors instead of a corrupt file.
    #[test]
    fn refuses_mixed_arrays_and_short_data() {
        let mixed = vec![(
            "k".to_string(),
            MetaValue::Array(vec![MetaValue::U8(1), MetaValue::I8(1)]),
        )];
        assert!(matches!(
            write_gguf(&mixed, &[]),
            Err(GgufWriteError::MixedArray { .. })
        ));
        let short = OutTensor {
            name: "t".into(),
            dims: vec![4, 2],
            ty: GgmlType::F32,
            data: vec![0; 16],
        };
        assert_eq!(
            write_gguf(&[], &[short]),
            Err(GgufWriteError::DataLength {
                name: "t".into(),
                got: 16,
                want: 32
            })
        );
    }
}
