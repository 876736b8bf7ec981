//! HF checkpoints in bitsandbytes' 4-bit layout (what `save_pretrained` writes for a
//! `load_in_4bit` model): per quantized linear `<name>.weight` (packed u8 `[n/2, 1]`),
//! `.weight.absmax`, `.weight.quant_map` and `.weight.quant_state.bitsandbytes__nf4` (a u8
//! tensor holding bnb's JSON of the non-tensor state), plus `nested_absmax` / `nested_quant_map`
//! with double quantization; `quantization_config` in config.json.

use super::nf4::{NF4_CODE, Nf4Error, quantize_nf4_double, quantize_nf4_shaped};
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
    let (tensor, absmax, nested) = if double_quant {
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
        let state = Some((dq.nested_blocksize, dq.offset));
        (dq.tensor, absmax, (nested, state))
    } else {
        let t = quantize_nf4_shaped(values, shape, blocksize)?;
        let absmax = (Dtype::F32, vec![t.absmax.len()], f32_bytes(&t.absmax));
        (t, absmax, (vec![], None))
    };
    let json = quant_state_json(shape, blocksize, nested.1);
    let mut out = vec![
        (
            name.to_string(),
            (
                Dtype::U8,
                vec![tensor.packed.len(), 1],
                tensor.packed.clone(),
            ),
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
    ];
    out.extend(nested.0);
    Ok(out)
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
