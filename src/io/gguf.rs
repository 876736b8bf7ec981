//! GGUF v2/v3 container reader: metadata and tensor table, with bounds-checked tensor data.
//!
//! Knows nothing about models: it parses the header, the key/value metadata and the tensor
//! infos from a byte slice (typically a memory map) and hands out sub-slices of tensor data.
//! Every length and count read from the file is checked against the bytes that remain, so a
//! truncated or corrupt file gives an error rather than a panic or a huge allocation.

use std::collections::BTreeMap;

use thiserror::Error;

use crate::quant::ggml::{GgmlError, GgmlType, ggml_type_name};

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Tensor data alignment used when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: usize = 32;
/// Most dimensions a ggml tensor can have (`GGML_MAX_DIMS`).
const MAX_DIMS: usize = 4;
/// Deepest nesting of metadata arrays we accept (guards the recursive reader's stack).
const MAX_ARRAY_DEPTH: usize = 8;
/// Most metadata array elements a file may hold in all. Each element takes a [`MetaValue`] (32
/// bytes) in memory for as little as one byte in the file, so counts checked against the file
/// size alone would still let a large file cost 32× its size; real tokenizers hold under two million.
const MAX_ARRAY_ELEMENTS: usize = 1 << 23;

/// Errors from parsing a GGUF file or reading its metadata.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum GgufError {
    /// The file does not start with "GGUF".
    #[error("not a GGUF file: starts with {found:?}, expected \"GGUF\"")]
    BadMagic {
        /// The first bytes found (fewer than 4 if the file is shorter).
        found: Vec<u8>,
    },
    /// A GGUF version other than 2 or 3.
    #[error("GGUF version {version} is not supported (wgtune reads versions 2 and 3){hint}")]
    UnsupportedVersion {
        /// The version field as read (little endian).
        version: u32,
        /// Extra advice for recognisable cases (v1, big-endian files).
        hint: &'static str,
    },
    /// The file ends before a structure it announces.
    #[error("GGUF file is truncated: it ends inside {what}")]
    Truncated {
        /// What was being read when the bytes ran out.
        what: String,
    },
    /// The file is structurally wrong (bad type code, bad UTF-8, duplicate name, ...).
    #[error("invalid GGUF file: {0}")]
    Invalid(String),
    /// The data of a tensor runs past the end of the file.
    #[error(
        "GGUF file is truncated: data of tensor {tensor} ends at byte {end}, but the file has only {len} bytes"
    )]
    TensorDataTruncated {
        /// The first tensor that does not fit.
        tensor: String,
        /// Byte offset (from the file start) where its data would end.
        end: u64,
        /// The file length.
        len: usize,
    },
    /// A tensor stored in a ggml type that wgtune cannot decode.
    #[error(
        "tensor {tensor} has ggml type {type_name}, which wgtune does not support (supported: {})",
        supported_type_names()
    )]
    UnsupportedType {
        /// The tensor name.
        tensor: String,
        /// ggml's name for its type ("unknown" for ids ggml does not define).
        type_name: &'static str,
    },
    /// A tensor whose shape does not fit its type's blocks.
    #[error("tensor {tensor}: {source}")]
    BadShape {
        /// The tensor name.
        tensor: String,
        /// The block-size or length problem.
        #[source]
        source: GgmlError,
    },
    /// A required metadata key is absent.
    #[error("GGUF metadata key {key} is missing")]
    MissingKey {
        /// The key looked up.
        key: String,
    },
    /// A metadata key holds a value of another type than the caller needs.
    #[error("GGUF metadata key {key} holds {found}, expected {expected}")]
    WrongType {
        /// The key looked up.
        key: String,
        /// What the caller asked for.
        expected: &'static str,
        /// What the file holds.
        found: &'static str,
    },
}

/// "F32, F16, Q4_0, Q4_1, Q8_0": the types wgtune decodes, for error messages.
fn supported_type_names() -> String {
    GgmlType::ALL.map(|t| t.name()).join(", ")
}

/// One metadata value, as typed in the file.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// GGUF type 0.
    U8(u8),
    /// GGUF type 1.
    I8(i8),
    /// GGUF type 2.
    U16(u16),
    /// GGUF type 3.
    I16(i16),
    /// GGUF type 4.
    U32(u32),
    /// GGUF type 5.
    I32(i32),
    /// GGUF type 10.
    U64(u64),
    /// GGUF type 11.
    I64(i64),
    /// GGUF type 6.
    F32(f32),
    /// GGUF type 12.
    F64(f64),
    /// GGUF type 7.
    Bool(bool),
    /// GGUF type 8 (UTF-8).
    Str(String),
    /// GGUF type 9 (elements all of one type).
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// Any integer that is non-negative, as u64 (files differ in which int width they use).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer that fits i64 (e.g. token types, stored as I32).
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Self::I8(v) => Some(v.into()),
            Self::I16(v) => Some(v.into()),
            Self::I32(v) => Some(v.into()),
            Self::I64(v) => Some(v),
            Self::U64(v) => i64::try_from(v).ok(),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// A float, or an integer converted to f64 (e.g. rope bases written as ints).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            Self::U64(v) => Some(v as f64),
            Self::I64(v) => Some(v as f64),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    /// The boolean, if this is one.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(v) => Some(v),
            _ => None,
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The elements, if this is an array.
    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            Self::Array(v) => Some(v),
            _ => None,
        }
    }

    /// The GGUF type name of this value ("u32", "string", "array", ...), for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::U8(_) => "u8",
            Self::I8(_) => "i8",
            Self::U16(_) => "u16",
            Self::I16(_) => "i16",
            Self::U32(_) => "u32",
            Self::I32(_) => "i32",
            Self::U64(_) => "u64",
            Self::I64(_) => "i64",
            Self::F32(_) => "f32",
            Self::F64(_) => "f64",
            Self::Bool(_) => "bool",
            Self::Str(_) => "string",
            Self::Array(_) => "array",
        }
    }
}

/// One entry of the tensor table: name, shape, storage type and where its data lies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Tensor name, e.g. "blk.0.attn_q.weight".
    pub name: String,
    /// Shape in ggml order: `dims[0]` is `ne[0]`, the contiguous (row) dimension.
    pub dims: Vec<u64>,
    /// Raw ggml type id (may be a type wgtune does not decode).
    pub ggml_type_id: u32,
    /// Byte offset of the data, relative to the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Number of elements (product of dims; saturates, though `Gguf::parse` rejects overflow).
    pub fn n_elems(&self) -> u64 {
        self.dims.iter().fold(1u64, |acc, &d| acc.saturating_mul(d))
    }

    /// The storage type, or `UnsupportedType` naming ggml's type if wgtune cannot decode it.
    pub fn ty(&self) -> Result<GgmlType, GgufError> {
        GgmlType::from_id(self.ggml_type_id).ok_or_else(|| GgufError::UnsupportedType {
            tensor: self.name.clone(),
            type_name: ggml_type_name(self.ggml_type_id),
        })
    }

    /// Bytes of data this tensor occupies (whole rows of whole blocks).
    pub fn byte_len(&self) -> Result<usize, GgufError> {
        let ty = self.ty()?;
        let bad_shape = |source| GgufError::BadShape {
            tensor: self.name.clone(),
            source,
        };
        let overflow = || {
            bad_shape(GgmlError::Overflow {
                ty: ty.name(),
                n: usize::MAX,
            })
        };
        let to_usize = |v: u64| usize::try_from(v).map_err(|_| overflow());
        let n_cols = to_usize(self.dims.first().copied().unwrap_or(1))?;
        let row_bytes = ty.row_bytes(n_cols).map_err(bad_shape)?;
        let n_rows = self.dims.iter().skip(1).try_fold(1usize, |acc, &d| {
            to_usize(d).and_then(|d| acc.checked_mul(d).ok_or_else(overflow))
        })?;
        row_bytes.checked_mul(n_rows).ok_or_else(overflow)
    }
}

/// A parsed GGUF header: version, metadata, tensor table and where tensor data starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Gguf {
    /// Format version (2 or 3).
    pub version: u32,
    /// All metadata key/value pairs.
    pub metadata: BTreeMap<String, MetaValue>,
    /// The metadata keys in file order (re-written files keep it, as llama.cpp's tools do).
    pub key_order: Vec<String>,
    /// The tensor table, in file order.
    pub tensors: Vec<TensorInfo>,
    /// Byte offset of the data section from the start of the file.
    pub data_start: usize,
    /// Alignment of the data section and of every tensor offset.
    pub alignment: usize,
}

/// A cursor over the file bytes whose reads fail with `Truncated` instead of panicking.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// Metadata array elements still allowed (see [`MAX_ARRAY_ELEMENTS`]).
    elements_left: usize,
}

impl<'a> Reader<'a> {
    /// Bytes left after the cursor.
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    /// The next `n` bytes; `what` names the structure for the error.
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated { what: what.into() });
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// The next `N` bytes as an array.
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A length or count that must be backed by at least `min_item_bytes` bytes per item.
    fn count(&mut self, min_item_bytes: usize, what: &str) -> Result<usize, GgufError> {
        let n = self.u64(what)?;
        let fits = usize::try_from(n)
            .ok()
            .filter(|&n| n.saturating_mul(min_item_bytes) <= self.remaining());
        fits.ok_or_else(|| GgufError::Truncated {
            what: format!("{what} (announces {n} items)"),
        })
    }

    /// A GGUF string: u64 length then UTF-8 bytes.
    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let len = self.count(1, what)?;
        let raw = self.take(len, what)?;
        String::from_utf8(raw.to_vec())
            .map_err(|_| GgufError::Invalid(format!("{what} is not valid UTF-8")))
    }

    /// A metadata value of GGUF type `ty`; `depth` counts enclosing arrays.
    fn value(&mut self, ty: u32, depth: usize, what: &str) -> Result<MetaValue, GgufError> {
        Ok(match ty {
            0 => MetaValue::U8(u8::from_le_bytes(self.array(what)?)),
            1 => MetaValue::I8(i8::from_le_bytes(self.array(what)?)),
            2 => MetaValue::U16(u16::from_le_bytes(self.array(what)?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array(what)?)),
            4 => MetaValue::U32(u32::from_le_bytes(self.array(what)?)),
            5 => MetaValue::I32(i32::from_le_bytes(self.array(what)?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array(what)?)),
            7 => MetaValue::Bool(self.array::<1>(what)?[0] != 0),
            8 => MetaValue::Str(self.string(what)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::Invalid(format!(
                        "{what} nests arrays deeper than {MAX_ARRAY_DEPTH}"
                    )));
                }
                let elem_ty = self.u32(what)?;
                let min_bytes = min_value_bytes(elem_ty).ok_or_else(|| {
                    GgufError::Invalid(format!("{what} has element type {elem_ty}"))
                })?;
                let n = self.count(min_bytes, what)?;
                self.elements_left = self.elements_left.checked_sub(n).ok_or_else(|| {
                    GgufError::Invalid(format!(
                        "{what}: the metadata arrays hold more than {MAX_ARRAY_ELEMENTS} elements"
                    ))
                })?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(elem_ty, depth + 1, what)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(u64::from_le_bytes(self.array(what)?)),
            11 => MetaValue::I64(i64::from_le_bytes(self.array(what)?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array(what)?)),
            _ => return Err(GgufError::Invalid(format!("{what} has value type {ty}"))),
        })
    }
}

/// Fewest bytes a value of GGUF type `ty` occupies, or `None` for an unknown type.
fn min_value_bytes(ty: u32) -> Option<usize> {
    match ty {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        8 | 10..=12 => Some(8),
        9 => Some(12),
        _ => None,
    }
}

/// Rounds `pos` up to a multiple of `align` (a power of two), or `None` on overflow.
fn align_up(pos: usize, align: usize) -> Option<usize> {
    pos.checked_add(align - 1).map(|p| p & !(align - 1))
}

impl Gguf {
    /// Parses the header, metadata and tensor table of a GGUF v2/v3 file held in `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<Gguf, GgufError> {
        if bytes.len() < 4 || bytes[..4] != GGUF_MAGIC {
            return Err(GgufError::BadMagic {
                found: bytes[..bytes.len().min(4)].to_vec(),
            });
        }
        let mut r = Reader {
            bytes,
            pos: 4,
            elements_left: MAX_ARRAY_ELEMENTS,
        };
        let version = r.u32("the version field")?;
        if version != 2 && version != 3 {
            let hint = match version {
                1 => "; GGUF v1 files must be re-converted with a current llama.cpp",
                v if (2..=3).contains(&v.swap_bytes()) => "; this is a big-endian GGUF file",
                _ => "",
            };
            return Err(GgufError::UnsupportedVersion { version, hint });
        }
        // Smallest tensor info: empty name (8), n_dims (4), type (4), offset (8).
        let n_tensors = r.count(24, "the tensor count")?;
        // Smallest key/value: empty key (8), type (4), one-byte value (1).
        let n_kv = r.count(13, "the metadata count")?;

        let mut metadata = BTreeMap::new();
        let mut key_order = Vec::with_capacity(n_kv);
        for i in 0..n_kv {
            let key = r.string(&format!("metadata key #{i}"))?;
            let what = format!("metadata value {key}");
            let ty = r.u32(&what)?;
            let value = r.value(ty, 0, &what)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(GgufError::Invalid(format!("duplicate metadata key {key}")));
            }
            key_order.push(key);
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => v
                .as_u64()
                .and_then(|a| usize::try_from(a).ok())
                .filter(|a| a.is_power_of_two())
                .ok_or_else(|| {
                    GgufError::Invalid(format!(
                        "general.alignment must be a power of two, got {v:?}"
                    ))
                })?,
        };

        let mut tensors: Vec<TensorInfo> = Vec::with_capacity(n_tensors);
        let mut names = std::collections::BTreeSet::new();
        for i in 0..n_tensors {
            let name = r.string(&format!("the name of tensor #{i}"))?;
            let what = format!("the info of tensor {name}");
            let n_dims = r.u32(&what)? as usize;
            if n_dims > MAX_DIMS {
                return Err(GgufError::Invalid(format!(
                    "tensor {name} has {n_dims} dimensions (at most {MAX_DIMS})"
                )));
            }
            let dims = (0..n_dims)
                .map(|_| r.u64(&what))
                .collect::<Result<Vec<_>, _>>()?;
            let ggml_type_id = r.u32(&what)?;
            let offset = r.u64(&what)?;
            if dims
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .is_none()
            {
                return Err(GgufError::Invalid(format!(
                    "tensor {name} has shape {dims:?}, whose element count overflows"
                )));
            }
            if !offset.is_multiple_of(alignment as u64) {
                return Err(GgufError::Invalid(format!(
                    "tensor {name} data offset {offset} is not a multiple of the alignment {alignment}"
                )));
            }
            if !names.insert(name.clone()) {
                return Err(GgufError::Invalid(format!("duplicate tensor name {name}")));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type_id,
                offset,
            });
        }

        let data_start = align_up(r.pos, alignment)
            .ok_or_else(|| GgufError::Invalid("data section offset overflows".into()))?;
        let gguf = Gguf {
            version,
            metadata,
            key_order,
            tensors,
            data_start,
            alignment,
        };
        for t in &gguf.tensors {
            if GgmlType::from_id(t.ggml_type_id).is_some() {
                gguf.tensor_range(bytes.len(), t)?;
            }
        }
        Ok(gguf)
    }

    /// Every metadata pair in file order.
    pub fn metadata_in_order(&self) -> Vec<(String, MetaValue)> {
        self.key_order
            .iter()
            .filter_map(|k| Some((k.clone(), self.metadata.get(k)?.clone())))
            .collect()
    }

    /// The tensor with this name, if the file has one.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Start and end (file offsets) of `t`'s data, checked against a file of `len` bytes.
    fn tensor_range(&self, len: usize, t: &TensorInfo) -> Result<(usize, usize), GgufError> {
        let byte_len = t.byte_len()?;
        let start = (self.data_start as u64).checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(byte_len as u64));
        match (start, end) {
            (Some(s), Some(e)) if e <= len as u64 => Ok((s as usize, e as usize)),
            _ => Err(GgufError::TensorDataTruncated {
                tensor: t.name.clone(),
                end: end.unwrap_or(u64::MAX),
                len,
            }),
        }
    }

    /// The raw data of `t` within `bytes` (the same buffer that was parsed).
    pub fn tensor_bytes<'a>(&self, bytes: &'a [u8], t: &TensorInfo) -> Result<&'a [u8], GgufError> {
        let (start, end) = self.tensor_range(bytes.len(), t)?;
        Ok(&bytes[start..end])
    }

    /// The raw metadata value under `key`, if present.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    /// Looks up `key` and converts it with `conv`; `Ok(None)` if absent, error if mistyped.
    fn get_opt_as<'s, T>(
        &'s self,
        key: &str,
        expected: &'static str,
        conv: impl FnOnce(&'s MetaValue) -> Option<T>,
    ) -> Result<Option<T>, GgufError> {
        let Some(v) = self.metadata.get(key) else {
            return Ok(None);
        };
        conv(v).map(Some).ok_or_else(|| GgufError::WrongType {
            key: key.into(),
            expected,
            found: v.type_name(),
        })
    }

    /// Turns an absent value into `MissingKey`.
    fn required<T>(key: &str, v: Result<Option<T>, GgufError>) -> Result<T, GgufError> {
        v?.ok_or_else(|| GgufError::MissingKey { key: key.into() })
    }

    /// Optional string value.
    pub fn get_opt_str(&self, key: &str) -> Result<Option<&str>, GgufError> {
        self.get_opt_as(key, "a string", MetaValue::as_str)
    }

    /// Optional non-negative integer value (any int width).
    pub fn get_opt_u64(&self, key: &str) -> Result<Option<u64>, GgufError> {
        self.get_opt_as(key, "a non-negative integer", MetaValue::as_u64)
    }

    /// Optional number (float, or int converted).
    pub fn get_opt_f64(&self, key: &str) -> Result<Option<f64>, GgufError> {
        self.get_opt_as(key, "a number", MetaValue::as_f64)
    }

    /// Optional boolean value.
    pub fn get_opt_bool(&self, key: &str) -> Result<Option<bool>, GgufError> {
        self.get_opt_as(key, "a bool", MetaValue::as_bool)
    }

    /// Optional array value (any element type).
    pub fn get_opt_array(&self, key: &str) -> Result<Option<&[MetaValue]>, GgufError> {
        self.get_opt_as(key, "an array", MetaValue::as_array)
    }

    /// Optional array of strings.
    pub fn get_opt_str_array(&self, key: &str) -> Result<Option<Vec<&str>>, GgufError> {
        self.get_opt_as(key, "an array of strings", |v| {
            v.as_array()?.iter().map(MetaValue::as_str).collect()
        })
    }

    /// Required string value.
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        Self::required(key, self.get_opt_str(key))
    }

    /// Required non-negative integer value.
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        Self::required(key, self.get_opt_u64(key))
    }

    /// Required number.
    pub fn get_f64(&self, key: &str) -> Result<f64, GgufError> {
        Self::required(key, self.get_opt_f64(key))
    }

    /// Required boolean value.
    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        Self::required(key, self.get_opt_bool(key))
    }

    /// Required array value.
    pub fn get_array(&self, key: &str) -> Result<&[MetaValue], GgufError> {
        Self::required(key, self.get_opt_array(key))
    }

    /// Required array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>, GgufError> {
        Self::required(key, self.get_opt_str_array(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::ggml::dequantize;
    use crate::quant::ggml::legacy::BlockQ8_0;
    use half::f16;

    /// A minimal GGUF writer for tests.
    struct Writer {
        buf: Vec<u8>,
    }

    impl Writer {
        fn new(version: u32, n_tensors: u64, n_kv: u64) -> Self {
            let mut buf = b"GGUF".to_vec();
            buf.extend(version.to_le_bytes());
            buf.extend(n_tensors.to_le_bytes());
            buf.extend(n_kv.to_le_bytes());
            Writer { buf }
        }
        fn str(&mut self, s: &str) {
            self.buf.extend((s.len() as u64).to_le_bytes());
            self.buf.extend(s.as_bytes());
        }
        fn kv(&mut self, key: &str, ty: u32, value: &[u8]) {
            self.str(key);
            self.buf.extend(ty.to_le_bytes());
            self.buf.extend(value);
        }
        fn kv_str(&mut self, key: &str, value: &str) {
            self.str(key);
            self.buf.extend(8u32.to_le_bytes());
            self.str(value);
        }
        fn kv_str_array(&mut self, key: &str, items: &[&str]) {
            self.str(key);
            self.buf.extend(9u32.to_le_bytes());
            self.buf.extend(8u32.to_le_bytes());
            self.buf.extend((items.len() as u64).to_le_bytes());
            for s in items {
                self.str(s);
            }
        }
        fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) {
            self.str(name);
            self.buf.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                self.buf.extend(d.to_le_bytes());
            }
            self.buf.extend(ty.to_le_bytes());
            self.buf.extend(offset.to_le_bytes());
        }
        fn pad(&mut self, align: usize) {
            while !self.buf.len().is_multiple_of(align) {
                self.buf.push(0);
            }
        }
    }

    /// F32 values of the test file's "norm" tensor.
    const NORM: [f32; 4] = [1.0, -2.5, 0.125, 3.0];

    /// A small v3 file: several metadata kinds, an F32 [4] tensor and a Q8_0 [32, 2] tensor.
    fn sample_file() -> Vec<u8> {
        let mut w = Writer::new(3, 2, 7);
        w.kv_str("general.architecture", "llama");
        w.kv("llama.block_count", 4, &2u32.to_le_bytes());
        w.kv("llama.rope.freq_base", 6, &10000f32.to_le_bytes());
        w.kv("tokenizer.ggml.add_bos_token", 7, &[1]);
        w.kv("big", 10, &(1u64 << 40).to_le_bytes());
        w.kv("neg", 5, &(-3i32).to_le_bytes());
        w.kv_str_array("tokenizer.ggml.tokens", &["a", "b", "ünï"]);
        w.tensor("norm", &[4], 0, 0);
        w.tensor("proj", &[32, 2], 8, 32);
        w.pad(32);
        for v in NORM {
            w.buf.extend(v.to_le_bytes());
        }
        w.pad(32);
        for row in 0..2 {
            let block = BlockQ8_0 {
                d: f16::from_f32(0.5 * (row + 1) as f32),
                qs: std::array::from_fn(|i| i as i8 - 16),
            };
            w.buf.extend(block.to_bytes());
        }
        w.buf
    }

    #[test]
    fn parses_sample() {
        let bytes = sample_file();
        let g = Gguf::parse(&bytes).unwrap();
        assert_eq!(g.version, 3);
        assert_eq!(g.alignment, 32);
        assert_eq!(g.data_start % 32, 0);
        assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
        assert_eq!(g.get_u64("llama.block_count").unwrap(), 2);
        assert_eq!(g.get_f64("llama.rope.freq_base").unwrap(), 10000.0);
        assert!(g.get_bool("tokenizer.ggml.add_bos_token").unwrap());
        assert_eq!(g.get_u64("big").unwrap(), 1 << 40);
        assert_eq!(g.get("neg").and_then(MetaValue::as_i64), Some(-3));
        assert_eq!(
            g.get_str_array("tokenizer.ggml.tokens").unwrap(),
            ["a", "b", "ünï"]
        );
        assert_eq!(g.get_opt_str("nope").unwrap(), None);
        assert!(matches!(
            g.get_str("nope"),
            Err(GgufError::MissingKey { key }) if key == "nope"
        ));
        let err = g.get_u64("neg").unwrap_err();
        assert!(err.to_string().contains("neg"), "{err}");
        assert!(matches!(
            g.get_str("llama.block_count"),
            Err(GgufError::WrongType { .. })
        ));

        assert_eq!(g.tensors.len(), 2);
        let norm = g.tensor("norm").unwrap();
        assert_eq!(norm.ty().unwrap(), GgmlType::F32);
        let data = g.tensor_bytes(&bytes, norm).unwrap();
        assert_eq!(dequantize(GgmlType::F32, data, 4).unwrap(), NORM);

        let proj = g.tensor("proj").unwrap();
        assert_eq!(proj.dims, [32, 2]);
        assert_eq!(proj.n_elems(), 64);
        assert_eq!(proj.byte_len().unwrap(), 68);
        let vals = dequantize(GgmlType::Q8_0, g.tensor_bytes(&bytes, proj).unwrap(), 64).unwrap();
        assert_eq!(vals[0], -8.0);
        assert_eq!(vals[63], 15.0);
        assert!(g.tensor("missing").is_none());
    }

    #[test]
    fn truncation_is_an_error_everywhere() {
        let bytes = sample_file();
        for cut in 0..bytes.len() {
            let err = Gguf::parse(&bytes[..cut]).expect_err("truncated file must not parse");
            assert!(
                matches!(
                    err,
                    GgufError::Truncated { .. }
                        | GgufError::TensorDataTruncated { .. }
                        | GgufError::BadMagic { .. }
                ),
                "cut at {cut}: {err}"
            );
        }
        let err = Gguf::parse(&bytes[..bytes.len() - 1]).unwrap_err();
        assert!(err.to_string().contains("proj"), "{err}");
    }

    #[test]
    fn garbage_counts_do_not_allocate() {
        // Huge tensor count, then huge metadata count, then a huge array.
        let w = Writer::new(3, u64::MAX, 0);
        assert!(matches!(
            Gguf::parse(&w.buf),
            Err(GgufError::Truncated { .. })
        ));
        let w = Writer::new(3, 0, 1 << 60);
        assert!(matches!(
            Gguf::parse(&w.buf),
            Err(GgufError::Truncated { .. })
        ));
        let mut w = Writer::new(3, 0, 1);
        w.str("arr");
        w.buf.extend(9u32.to_le_bytes());
        w.buf.extend(8u32.to_le_bytes());
        w.buf.extend(u64::MAX.to_le_bytes());
        assert!(matches!(
            Gguf::parse(&w.buf),
            Err(GgufError::Truncated { .. })
        ));
        let mut w = Writer::new(3, 0, 1);
        w.kv("k", 99, &[0; 8]);
        assert!(matches!(Gguf::parse(&w.buf), Err(GgufError::Invalid(_))));
        // Flipping any byte of a valid file must not panic.
        let bytes = sample_file();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0xFF;
            let _ = Gguf::parse(&b);
        }
    }

    #[test]
    fn bad_magic_and_versions() {
        assert!(matches!(
            Gguf::parse(b"GGML\x03\0\0\0"),
            Err(GgufError::BadMagic { .. })
        ));
        assert!(matches!(Gguf::parse(b""), Err(GgufError::BadMagic { .. })));
        let err = Gguf::parse(&Writer::new(1, 0, 0).buf).unwrap_err();
        assert!(matches!(
            err,
            GgufError::UnsupportedVersion { version: 1, .. }
        ));
        assert!(err.to_string().contains("v1"), "{err}");
        let err = Gguf::parse(&Writer::new(3u32.swap_bytes(), 0, 0).buf).unwrap_err();
        assert!(err.to_string().contains("big-endian"), "{err}");
        assert_eq!(Gguf::parse(&Writer::new(2, 0, 0).buf).unwrap().version, 2);
    }

    #[test]
    fn unsupported_type_is_named() {
        let mut w = Writer::new(3, 1, 0);
        w.tensor("blk.0.ffn_down.weight", &[256, 4], 23, 0);
        // Parsing succeeds (data of unsupported types is not checked); asking for the type fails.
        let g = Gguf::parse(&w.buf).unwrap();
        let err = g.tensors[0].ty().unwrap_err();
        assert_eq!(
            err.to_string(),
            "tensor blk.0.ffn_down.weight has ggml type IQ4_XS, which wgtune does not support \
             (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)"
        );
        assert!(g.tensor_bytes(&w.buf, &g.tensors[0]).is_err());
    }

    #[test]
    fn bad_shapes_and_alignment() {
        // Q8_0 row of 33 values is not whole blocks.
        let mut w = Writer::new(3, 1, 0);
        w.tensor("t", &[33], 8, 0);
        assert!(matches!(
            Gguf::parse(&w.buf),
            Err(GgufError::BadShape { .. })
        ));
        // Misaligned offset.
        let mut w = Writer::new(3, 1, 0);
        w.tensor("t", &[1], 0, 4);
        assert!(matches!(Gguf::parse(&w.buf), Err(GgufError::Invalid(_))));
        // Custom alignment is honoured; a non-power-of-two one is rejected.
        let mut w = Writer::new(3, 0, 1);
        w.kv("general.alignment", 4, &64u32.to_le_bytes());
        assert_eq!(Gguf::parse(&w.buf).unwrap().alignment, 64);
        let mut w = Writer::new(3, 0, 1);
        w.kv("general.alignment", 4, &24u32.to_le_bytes());
        assert!(matches!(Gguf::parse(&w.buf), Err(GgufError::Invalid(_))));
        // Too many dims, overflowing shape, duplicate names.
        let mut w = Writer::new(3, 1, 0);
        w.tensor("t", &[1; 5], 0, 0);
        assert!(matches!(Gguf::parse(&w.buf), Err(GgufError::Invalid(_))));
        let mut w = Writer::new(3, 1, 0);
        w.tensor("t", &[u64::MAX, 2], 0, 0);
        assert!(matches!(Gguf::parse(&w.buf), Err(GgufError::Invalid(_))));
        let mut w = Writer::new(3, 2, 0);
        w.tensor("t", &[0], 0, 0);
        w.tensor("t", &[0], 0, 0);
        assert!(matches!(Gguf::parse(&w.buf), Err(GgufError::Invalid(_))));
    }

    /// Checks the header of the real SmolLM2 file; values from `gguf.GGUFReader` (gguf 0.19.0).
    #[test]
    fn smollm2_real_file() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/assets/SmolLM2-135M-Instruct.Q4_1.gguf"
        );
        let Ok(bytes) = std::fs::read(path) else {
            eprintln!("skipping: {path} not found");
            return;
        };
        let g = Gguf::parse(&bytes).unwrap();
        assert_eq!(g.version, 3);
        assert_eq!(g.metadata.len(), 33);
        assert_eq!(g.tensors.len(), 272);
        assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
        assert_eq!(g.get_u64("llama.block_count").unwrap(), 30);
        assert_eq!(g.get_u64("llama.embedding_length").unwrap(), 576);
        assert_eq!(g.get_u64("llama.attention.head_count_kv").unwrap(), 3);
        assert_eq!(g.get_f64("llama.rope.freq_base").unwrap(), 100000.0);
        assert_eq!(g.get_str("tokenizer.ggml.model").unwrap(), "gpt2");
        assert_eq!(
            g.get_str_array("tokenizer.ggml.tokens").unwrap().len(),
            49152
        );
        assert_eq!(g.get_str_array("tokenizer.ggml.merges").unwrap()[0], "Ġ t");
        let emb = g.tensor("token_embd.weight").unwrap();
        assert_eq!(emb.dims, [576, 49152]);
        assert_eq!(emb.ty().unwrap(), GgmlType::Q8_0);
        assert_eq!(g.data_start as u64 + emb.offset, 1785664);
        let down = g.tensor("blk.0.ffn_down.weight").unwrap();
        assert_eq!(down.dims, [1536, 576]);
        assert_eq!(down.ty().unwrap(), GgmlType::Q4_1);
        assert_eq!(g.data_start as u64 + down.offset, 31868992);
        assert_eq!(g.tensor_bytes(&bytes, down).unwrap().len(), 552960);
        let q41 = g.tensors.iter().filter(|t| t.ggml_type_id == 3).count();
        assert_eq!(q41, 210);
    }
}
