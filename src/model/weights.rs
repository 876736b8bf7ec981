//! Host-side weights in HF layout and naming, before they go to a device. Quantized tensors stay
//! packed here; [`HostTensor::to_f32`] dequantizes them for dense upload (CPU backend) and
//! [`Checkpoint::take_packed`] re-lays them for the fused GPU kernel.

use crate::kernels::qmatmul::{PackedHost, QFormat, QLayout};
use crate::quant::ggml::{self, GgmlType};
use std::collections::BTreeMap;

/// The values of a host tensor: plain f32 or ggml blocks (row-major, HF row order).
#[derive(Debug, Clone)]
pub enum HostData {
    /// Dense f32 values, row-major.
    F32(Vec<f32>),
    /// bitsandbytes NF4 (flat row-major blocks, fp32 absmax recovered from double quant if any).
    Nf4(crate::quant::nf4::Nf4Tensor),
    /// ggml-quantized rows: each row of `shape[1]` values is `row_bytes` bytes of blocks.
    Ggml {
        /// Block format.
        ty: GgmlType,
        /// Packed blocks, rows in HF order.
        bytes: Vec<u8>,
    },
}

/// One weight tensor on the host with its HF shape (`[out, in]` for linears).
#[derive(Debug, Clone)]
pub struct HostTensor {
    /// Shape in HF order (row-major).
    pub shape: Vec<usize>,
    /// Values, dense or quantized.
    pub data: HostData,
}

/// How a tensor is stored on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredType {
    /// Dense f32.
    F32,
    /// bitsandbytes NF4 with `blocksize` values per absmax.
    Nf4 {
        /// Values per absmax.
        blocksize: usize,
    },
    /// ggml blocks.
    Ggml(GgmlType),
}

/// A tensor's shape, storage type and size without its values: what `inspect` and the model
/// panels show, read from file headers alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorMeta {
    /// Shape in HF order.
    pub shape: Vec<usize>,
    /// Storage type on the host.
    pub ty: StoredType,
    /// Bytes it takes in host memory.
    pub bytes: usize,
}

impl TensorMeta {
    /// Number of elements (saturating: the readers reject shapes whose product overflows).
    pub fn numel(&self) -> usize {
        self.shape.iter().fold(1usize, |a, &d| a.saturating_mul(d))
    }

    /// Human name of the storage type (`F32`, `Q4_1`, ...), for `inspect`.
    pub fn type_name(&self) -> &'static str {
        match self.ty {
            StoredType::F32 => "F32",
            StoredType::Nf4 { .. } => "NF4",
            StoredType::Ggml(ty) => ty.name(),
        }
    }

    /// Bytes in the fused kernel's packed GPU layout, when this is a 2-D block-quantized weight the
    /// kernel reads (`None` otherwise: it would be uploaded as f32).
    pub fn packed_gpu_bytes(&self) -> Option<usize> {
        let [n, k] = self.shape[..] else { return None };
        let layout = match self.ty {
            StoredType::Nf4 { blocksize } => QLayout::new(QFormat::Nf4, n, k, blocksize),
            StoredType::Ggml(ty) => QLayout::new(QFormat::Ggml(ty), n, k, 0),
            StoredType::F32 => return None,
        };
        layout.ok().and_then(|l| l.total_words().checked_mul(4))
    }
}

impl HostTensor {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Shape, storage type and size, without the values.
    pub fn meta(&self) -> TensorMeta {
        let (ty, bytes) = match &self.data {
            HostData::F32(v) => (StoredType::F32, v.len() * 4),
            HostData::Nf4(t) => (
                StoredType::Nf4 {
                    blocksize: t.blocksize,
                },
                t.packed.len() + t.absmax.len() * 4,
            ),
            HostData::Ggml { ty, bytes } => (StoredType::Ggml(*ty), bytes.len()),
        };
        TensorMeta {
            shape: self.shape.clone(),
            ty,
            bytes,
        }
    }

    /// The values as f32: the single dequantize-on-load point for quantized tensors.
    pub fn to_f32(&self) -> Result<Vec<f32>, String> {
        match &self.data {
            HostData::F32(v) => Ok(v.clone()),
            HostData::Nf4(t) => crate::quant::nf4::dequantize_nf4(t).map_err(|e| e.to_string()),
            HostData::Ggml { ty, bytes } => {
                ggml::dequantize(*ty, bytes, self.numel()).map_err(|e| e.to_string())
            }
        }
    }
}

/// All weights of a model by HF name, plus where they came from (for error messages).
#[derive(Debug, Default)]
pub struct Checkpoint {
    /// Tensors by HF name (`model.layers.0.self_attn.q_proj.weight`, ...).
    pub tensors: BTreeMap<String, HostTensor>,
    /// The file or folder shown in errors.
    pub origin: String,
}

impl Checkpoint {
    /// The tensor `name` as f32, checked to have shape `want`; errors name the file and tensor.
    pub fn take_f32(&self, name: &str, want: &[usize]) -> Result<Vec<f32>, crate::io::LoadError> {
        use crate::io::LoadError;
        let file = &self.origin;
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| LoadError::MissingTensor {
                file: file.clone(),
                name: name.to_string(),
            })?;
        if t.shape != want {
            return Err(LoadError::Shape {
                file: file.clone(),
                name: name.into(),
                got: t.shape.clone(),
                want: want.to_vec(),
            });
        }
        t.to_f32()
            .map_err(|e| LoadError::invalid(file, format!("tensor `{name}`: {e}")))
    }

    /// The tensor `name` in the fused kernel's packed layout, when it is stored block-quantized
    /// with shape `want` in a layout the kernel reads (otherwise `None`: callers upload it dense).
    pub fn take_packed(&self, name: &str, want: &[usize]) -> Option<PackedHost> {
        let t = self.tensors.get(name).filter(|t| t.shape == want)?;
        match (&t.data, want) {
            (HostData::Nf4(q), _) => PackedHost::from_nf4(q).ok(),
            (HostData::Ggml { ty, bytes }, [n, k]) => {
                PackedHost::from_ggml(*ty, bytes, *n, *k).ok()
            }
            _ => None,
        }
    }
}

/// Per storage type of a checkpoint: how many tensors, their size in the file and on a GPU device
/// (where the decoder linears stay packed and everything else is f32), for `inspect` and the apps.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TensorGroup {
    /// Storage type (`F32`, `BF16`, `Q4_K`, `NF4`, ...).
    pub ty: String,
    /// Tensors of this type.
    pub count: usize,
    /// Their parameters.
    pub numel: usize,
    /// Their bytes as stored.
    pub bytes: usize,
    /// Their bytes on a GPU device.
    pub gpu_bytes: usize,
    /// How many of them stay packed on a GPU device.
    pub packed_count: usize,
    /// Parameters of those.
    pub packed_numel: usize,
    /// Their packed bytes on the GPU.
    pub packed_bytes: usize,
}

impl TensorGroup {
    /// Bits per weight as stored.
    pub fn stored_bpw(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.numel.max(1) as f64
    }

    /// Bits per weight of the packed tensors on the GPU (`None` when none stays packed).
    pub fn packed_bpw(&self) -> Option<f64> {
        (self.packed_numel > 0).then(|| self.packed_bytes as f64 * 8.0 / self.packed_numel as f64)
    }
}

impl Checkpoint {
    /// Tensors grouped by storage type, sorted by type name; `is_packed_role(name)` says which
    /// tensors the loader keeps packed on GPU devices (the decoder linears).
    pub fn groups(&self, is_packed_role: impl Fn(&str) -> bool) -> Vec<TensorGroup> {
        let metas: Vec<(&str, TensorMeta)> = self
            .tensors
            .iter()
            .map(|(name, t)| (name.as_str(), t.meta()))
            .collect();
        group_tensors(metas.iter().map(|(n, m)| (*n, m)), is_packed_role)
    }
}

/// Tensors (name and metadata) grouped by storage type, sorted by type name; `is_packed_role(name)`
/// says which tensors the loader keeps packed on GPU devices (the decoder linears). Sizes saturate.
pub fn group_tensors<'a>(
    tensors: impl IntoIterator<Item = (&'a str, &'a TensorMeta)>,
    is_packed_role: impl Fn(&str) -> bool,
) -> Vec<TensorGroup> {
    let mut groups: BTreeMap<&str, TensorGroup> = BTreeMap::new();
    for (name, t) in tensors {
        let g = groups.entry(t.type_name()).or_default();
        let numel = t.numel();
        g.count += 1;
        g.numel = g.numel.saturating_add(numel);
        g.bytes = g.bytes.saturating_add(t.bytes);
        match t.packed_gpu_bytes().filter(|_| is_packed_role(name)) {
            Some(b) => {
                g.gpu_bytes = g.gpu_bytes.saturating_add(b);
                g.packed_count += 1;
                g.packed_numel = g.packed_numel.saturating_add(numel);
                g.packed_bytes = g.packed_bytes.saturating_add(b);
            }
            None => g.gpu_bytes = g.gpu_bytes.saturating_add(numel.saturating_mul(4)),
        }
    }
    groups
        .into_iter()
        .map(|(ty, g)| TensorGroup {
            ty: ty.to_string(),
            ..g
        })
        .collect()
}
