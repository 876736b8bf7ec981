//! Element masks over adapter tensors (LoRA-PAR): one u8 code per parameter element, stored in a
//! safetensors file under the tensor's peft key (`0` unused, `1` System-1 only, `2` System-2
//! only, `3` shared), and the 0/1 float masks the optimizer takes
//! ([`Trainer::masks`](crate::train::trainer::Trainer::masks): elements at 0 get no gradient, no
//! AdamW update and no weight decay).

use burn::tensor::{Device, Tensor, TensorData};
use safetensors::Dtype;
use std::collections::BTreeMap;

/// Element in neither system's set (frozen).
pub const UNUSED: u8 = 0;
/// Element only in System 1's set.
pub const S1_ONLY: u8 = 1;
/// Element only in System 2's set.
pub const S2_ONLY: u8 = 2;
/// Element in both sets.
pub const SHARED: u8 = 3;

/// Per-element codes of every adapter tensor, in parameter order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElementMasks {
    /// `(peft key, [rows, cols], codes)` per adapter tensor.
    pub tensors: Vec<(String, [usize; 2], Vec<u8>)>,
}

impl ElementMasks {
    /// safetensors bytes: one U8 tensor per adapter tensor, under its peft key.
    pub fn to_safetensors(&self) -> Result<Vec<u8>, String> {
        self.to_safetensors_with("0 unused, 1 system-1 only, 2 system-2 only, 3 shared")
    }

    /// As [`ElementMasks::to_safetensors`], with `codes` (what each code means) as the file's
    /// `codes` metadata, for files whose codes mean something else (per-stage bits).
    pub fn to_safetensors_with(&self, codes: &str) -> Result<Vec<u8>, String> {
        let raw: BTreeMap<String, crate::io::safetensors::RawTensor> = self
            .tensors
            .iter()
            .map(|(k, s, v)| (k.clone(), (Dtype::U8, s.to_vec(), v.clone())))
            .collect();
        let meta = std::collections::HashMap::from([("codes".to_string(), codes.to_string())]);
        crate::io::safetensors::serialize_raw(&raw, Some(meta)).map_err(|e| e.to_string())
    }

    /// Read masks written by [`ElementMasks::to_safetensors`] (keys in file order: sorted).
    pub fn from_safetensors(bytes: &[u8]) -> Result<Self, String> {
        let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
        let mut tensors = Vec::new();
        let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
        names.sort();
        for name in names {
            let view = st.tensor(&name).map_err(|e| e.to_string())?;
            let (Dtype::U8, [r, c]) = (view.dtype(), view.shape()) else {
                return Err(format!("mask `{name}` must be a 2-d u8 tensor"));
            };
            if let Some(bad) = view.data().iter().find(|&&x| x > SHARED) {
                return Err(format!("mask `{name}` holds code {bad} (0..=3)"));
            }
            tensors.push((name.clone(), [*r, *c], view.data().to_vec()));
        }
        Ok(Self { tensors })
    }

    /// Elements with `code`.
    pub fn count(&self, code: u8) -> usize {
        self.tensors
            .iter()
            .map(|t| t.2.iter().filter(|&&x| x == code).count())
            .sum()
    }

    /// All elements.
    pub fn len(&self) -> usize {
        self.tensors.iter().map(|t| t.2.len()).sum()
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// 0/1 float tensors (1 = trainable) from per-tensor flags, for the optimizer.
pub fn float_masks(active: &[(String, [usize; 2], Vec<bool>)], device: &Device) -> Vec<Tensor<2>> {
    active
        .iter()
        .map(|(_, shape, v)| {
            let f: Vec<f32> = v.iter().map(|&a| if a { 1.0 } else { 0.0 }).collect();
            Tensor::from_data(TensorData::new(f, *shape), device)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let m = ElementMasks {
            tensors: vec![
                ("a.lora_A.weight".into(), [1, 3], vec![0, 1, 3]),
                ("a.lora_B.weight".into(), [2, 1], vec![2, 2]),
            ],
        };
        let back = ElementMasks::from_safetensors(&m.to_safetensors().unwrap()).unwrap();
        assert_eq!(back, m);
        assert_eq!((m.count(SHARED), m.count(S2_ONLY), m.len()), (1, 2, 5));
    }
}
