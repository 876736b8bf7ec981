//! HF checkpoints in bitsandbytes' 4-bit layout (what `save_pretrained` writes for a
//! `load_in_4bit` model): per quantized linear `<name>.weight` (packed u8 `[n/2, 1]`),
//! `.weight.absmax`, `.weight.quant_map` and `.weight.quant_state.bitsandbytes__nf4` (a u8
//! tensor holding bnb's JSON of the non-tensor state), plus `nested_absmax` / `nested_quant_map`
//! with double quantization; `quantization_config` in config.json.

use super::nf4::{NF4_CODE, Nf4Error, Nf4Tensor, quantize_nf4_double, quantize_nf4_shaped};
use crate::io::chat::py_float_repr;
use safetensors::Dtype;

use crate::io::safetensors::RawTensor;

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    bytemuck::cast_slice::<f32, u8>(v).to_vec()
}

/// Whether transformers quantizes this HF tensor by default: every linear inside the decoder
/// blocks (embeddings, norms and `lm_head` stay in full precision).
pub fn is_quantized_by_default(name: &str) -> bool {
    name.starts_with("model.layers.") && name.ends_with("_proj.weight")
}

/// bnb's `pack_dict_to_tensor(json.dumps(state))` for the non-tensor quant state.
fn quant_state_json(shape: &[usize], blocksize: usize, nested: Option<(usize, f32)>) -> String {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let mut s = format!(
        "{{\"quant_type\": \"nf4\", \"blocksize\": {blocksize}, \"dtype\": \"float32\", \"shape\": [{}]",
        dims.join(", ")
    );
    if let Some((nested_blocksize, offset)) = nested {
        s.push_str(&format!(
            ", \"nested_blocksize\": {nested_blocksize}, \"nested_dtype\": \"float32\", \"nested_offset\": {}",
            py_float_repr(offset as f64)
        ));
    }
    s.push('}');
    s
}

/// The tensors bnb stores for one linear weight `name` (e.g. `model.layers.0.self_attn.q_proj.weight`).
pub fn nf4_linear_tensors(
    name: &str,
    values: &[f32],
    shape: &[usize],
    blocksize: usize,
    double_quant: bool,
) -> Result<Vec<(String, RawTensor)>, Nf4Error> {
    if !double_quant {
        let t = quantize_nf4_shaped(values, shape, blocksize)?;
        return Ok(nf4_packed_tensors(name, &t));
    }
    let dq = quantize_nf4_double(values, shape, blocksize)?;
    let absmax = (
        Dtype::U8,
        vec![dq.quantized_absmax.len()],
        dq.quantized_absmax.clone(),
    );
    let nested = vec![
        (
            format!("{name}.nested_absmax"),
            (
                Dtype::F32,
                vec![dq.nested_absmax.len()],
                f32_bytes(&dq.nested_absmax),
            ),
        ),
        (
            format!("{name}.nested_quant_map"),
            (
                Dtype::F32,
                vec![dq.nested_code.len()],
                f32_bytes(&dq.nested_code),
            ),
        ),
    ];
    let json = quant_state_json(shape, blocksize, Some((dq.nested_blocksize, dq.offset)));
    let mut out = layout(name, &dq.tensor, absmax, json);
    out.extend(nested);
    Ok(out)
}

/// The tensors bnb stores for a weight that is already NF4 (no double quantization), so its
/// bytes are written as they are.
pub fn nf4_packed_tensors(name: &str, t: &Nf4Tensor) -> Vec<(String, RawTensor)> {
    let absmax = (Dtype::F32, vec![t.absmax.len()], f32_bytes(&t.absmax));
    let json = quant_state_json(&t.shape, t.blocksize, None);
    layout(name, t, absmax, json)
}

/// The packed weight, its absmax, the code table and the JSON quant state, in bnb's names.
fn layout(name: &str, t: &Nf4Tensor, absmax: RawTensor, json: String) -> Vec<(String, RawTensor)> {
    vec![
        (
            name.to_string(),
            (Dtype::U8, vec![t.packed.len(), 1], t.packed.clone()),
        ),
        (format!("{name}.absmax"), absmax),
        (
            format!("{name}.quant_map"),
            (Dtype::F32, vec![16], f32_bytes(&NF4_CODE)),
        ),
        (
            format!("{name}.quant_state.bitsandbytes__nf4"),
            (Dtype::U8, vec![json.len()], json.into_bytes()),
        ),
    ]
}

/// The `quantization_config` block transformers writes for an NF4 checkpoint.
pub fn quantization_config(double_quant: bool) -> serde_json::Value {
    serde_json::json!({
        "_load_in_4bit": true,
        "_load_in_8bit": false,
        "bnb_4bit_compute_dtype": "float32",
        "bnb_4bit_quant_storage": "uint8",
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": double_quant,
        "llm_int8_enable_fp32_cpu_offload": false,
        "llm_int8_has_fp16_weight": false,
        "llm_int8_skip_modules": null,
        "llm_int8_threshold": 6.0,
        "load_in_4bit": true,
        "load_in_8bit": false,
        "quant_method": "bitsandbytes"
    })
}

/// Whether `name` is one of the auxiliary tensors bnb stores beside a quantized `*.weight`.
pub fn is_quant_aux(name: &str) -> bool {
    name.contains(".quant_state.")
        || [
            ".absmax",
            ".quant_map",
            ".nested_absmax",
            ".nested_quant_map",
        ]
        .iter()
        .any(|s| name.ends_with(s))
}

/// The shape and blocksize of the bnb 4-bit tensor `name` from its quant-state header alone, if it
/// is one (`Ok(None)` otherwise): no tensor data is read beyond the small state JSON.
pub fn nf4_state(
    st: &safetensors::SafeTensors<'_>,
    name: &str,
) -> Result<Option<(Vec<usize>, usize)>, String> {
    let Some(json) = state_json(st, name)? else {
        return Ok(None);
    };
    Ok(Some(shape_and_blocksize(&json, name)?))
}

/// The parsed `{name}.quant_state.bitsandbytes__nf4` JSON, if `name` has one; FP4 is refused.
fn state_json(
    st: &safetensors::SafeTensors<'_>,
    name: &str,
) -> Result<Option<serde_json::Value>, String> {
    let state_key = format!("{name}.quant_state.bitsandbytes__nf4");
    let Ok(state) = st.tensor(&state_key) else {
        if st
            .tensor(&format!("{name}.quant_state.bitsandbytes__fp4"))
            .is_ok()
        {
            return Err(format!(
                "`{name}` is bitsandbytes FP4; only NF4 is supported"
            ));
        }
        return Ok(None);
    };
    serde_json::from_slice(state.data())
        .map(Some)
        .map_err(|e| format!("`{state_key}`: {e}"))
}

/// `shape` and `blocksize` of a quant state, checked: a blocksize bitsandbytes uses, a shape whose
/// product fits.
fn shape_and_blocksize(
    json: &serde_json::Value,
    name: &str,
) -> Result<(Vec<usize>, usize), String> {
    let field = |k: &str| {
        json.get(k)
            .ok_or_else(|| format!("the quant state of `{name}` has no `{k}`"))
    };
    let blocksize = field("blocksize")?
        .as_u64()
        .and_then(|b| usize::try_from(b).ok())
        .ok_or("blocksize is not an integer")?;
    crate::quant::nf4::check_blocksize(blocksize).map_err(|e| format!("`{name}`: {e}"))?;
    let shape: Vec<usize> = field("shape")?
        .as_array()
        .ok_or("shape is not a list")?
        .iter()
        .map(|d| {
            d.as_u64()
                .and_then(|d| usize::try_from(d).ok())
                .ok_or("shape holds a non-integer")
        })
        .collect::<Result<_, _>>()?;
    if shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .is_none()
    {
        return Err(format!("`{name}`: shape {shape:?} overflows"));
    }
    Ok((shape, blocksize))
}

/// Read the bnb 4-bit tensor `name` from a safetensors file, if it is one (`Ok(None)` otherwise).
/// NF4 only; the packed bytes stay packed, double-quantized scales are recovered to f32.
pub fn read_nf4(
    st: &safetensors::SafeTensors<'_>,
    name: &str,
) -> Result<Option<crate::quant::nf4::Nf4Tensor>, String> {
    let Some(json) = state_json(st, name)? else {
        return Ok(None);
    };
    let (shape, blocksize) = shape_and_blocksize(&json, name)?;
    let field = |k: &str| {
        json.get(k)
            .ok_or_else(|| format!("the quant state of `{name}` has no `{k}`"))
    };
    let tensor = |k: &str| {
        st.tensor(&format!("{name}.{k}"))
            .map_err(|_| format!("missing `{name}.{k}`"))
    };
    let f32s = |k: &str| -> Result<Vec<f32>, String> {
        let t = tensor(k)?;
        if t.dtype() != Dtype::F32 {
            return Err(format!("`{name}.{k}` must be F32, found {:?}", t.dtype()));
        }
        Ok(bytemuck::pod_collect_to_vec(t.data()))
    };
    if f32s("quant_map")?
        .iter()
        .zip(NF4_CODE)
        .any(|(a, b)| a.to_bits() != b.to_bits())
    {
        return Err(format!("`{name}.quant_map` is not the NF4 code"));
    }
    let absmax = match json
        .get("nested_offset")
        .and_then(serde_json::Value::as_f64)
    {
        Some(offset) => {
            let nested_blocksize = field("nested_blocksize")?
                .as_u64()
                .ok_or("nested_blocksize")? as usize;
            let q = tensor("absmax")?;
            crate::quant::nf4::dequantize_absmax_dq(
                q.data(),
                &f32s("nested_absmax")?,
                &f32s("nested_quant_map")?,
                offset as f32,
                nested_blocksize,
            )
            .map_err(|e| format!("`{name}`: {e}"))?
        }
        None => f32s("absmax")?,
    };
    let packed = st.tensor(name).map_err(|_| format!("missing `{name}`"))?;
    if packed.dtype() != Dtype::U8 {
        return Err(format!(
            "`{name}` must be packed U8, found {:?}",
            packed.dtype()
        ));
    }
    let packed = packed.data().to_vec();
    let t = crate::quant::nf4::Nf4Tensor {
        packed,
        absmax,
        shape,
        blocksize,
    };
    crate::quant::nf4::dequantize_nf4(&t).map_err(|e| format!("`{name}`: {e}"))?;
    Ok(Some(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_state_json() {
        let w: Vec<f32> = (0..64 * 96)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
            .collect();
        let t = nf4_linear_tensors("m.weight", &w, &[64, 96], 64, false).unwrap();
        let keys: Vec<&str> = t.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "m.weight",
                "m.weight.absmax",
                "m.weight.quant_map",
                "m.weight.quant_state.bitsandbytes__nf4"
            ]
        );
        assert_eq!(t[0].1.1, vec![64 * 96 / 2, 1]);
        let json = String::from_utf8(t[3].1.2.clone()).unwrap();
        assert_eq!(
            json,
            r#"{"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [64, 96]}"#
        );
        let dq = nf4_linear_tensors("m.weight", &w, &[64, 96], 64, true).unwrap();
        assert_eq!(dq.len(), 6);
        assert_eq!(dq[1].1.0, Dtype::U8);
        let v: serde_json::Value = serde_json::from_slice(&dq[3].1.2).unwrap();
        assert_eq!(v["nested_blocksize"], 256);
        assert!(is_quantized_by_default(
            "model.layers.3.mlp.down_proj.weight"
        ));
        assert!(
            !is_quantized_by_default("lm_head.weight")
                && !is_quantized_by_default("model.norm.weight")
        );
    }
}
