//! From files to a model on a device: HF folders and GGUF files become one [`Checkpoint`] in HF
//! naming and layout (GGUF tensors renamed, llama.cpp's Q/K row permutation undone), validated
//! against the config, then uploaded as a [`Llama`].

use super::attention::Attention;
use super::linear::{AdaptedLinear, BaseLinear};
use super::llama::{Block, Llama, LlamaConfig, Mlp, config_inv_freq};
use super::weights::{Checkpoint, HostData, HostTensor};
use crate::io::chat::ChatTemplate;
use crate::io::gguf::{Gguf, MetaValue};
use crate::io::tokenizer::tokenizer_from_gguf;
use crate::io::{Blob, FileSource, LoadError, hf};
use crate::kernels::qmatmul::PackedWeight;
use burn::tensor::{Device, Tensor, TensorData};
use std::collections::BTreeMap;

/// Where a model comes from.
pub enum ModelSource<'a> {
    /// An HF folder (config.json + safetensors + tokenizer.json).
    HfFolder(&'a dyn FileSource),
    /// A GGUF file's bytes and the name to show in errors.
    Gguf {
        /// The whole file.
        bytes: Blob,
        /// Path shown in messages.
        name: String,
    },
}

/// Everything read from the model files, still on the host.
pub struct ModelFiles {
    /// Hyper-parameters.
    pub config: LlamaConfig,
    /// Weights in HF naming and layout (quantized ones still packed).
    pub checkpoint: Checkpoint,
    /// The tokenizer, when the files carry one.
    pub tokenizer: Option<tokenizers::Tokenizer>,
    /// The chat template, when the files carry one.
    pub chat_template: Option<ChatTemplate>,
    /// `hf-safetensors` or `gguf vN`.
    pub format: String,
}

/// A model on a device plus what is needed to talk to it.
pub struct LoadedModel {
    /// The network.
    pub model: Llama,
    /// Its tokenizer, if the files had one.
    pub tokenizer: Option<tokenizers::Tokenizer>,
    /// Its chat template, if the files had one.
    pub chat_template: Option<ChatTemplate>,
}

/// Read a model's files into host memory (no device needed: `inspect` stops here).
pub fn read_model(src: ModelSource<'_>) -> Result<ModelFiles, LoadError> {
    match src {
        ModelSource::HfFolder(dir) => read_hf(dir),
        ModelSource::Gguf { bytes, name } => read_gguf((*bytes).as_ref(), &name),
    }
}

/// Quantize the base on load: every decoder-block linear stored in f32 becomes NF4 (bitsandbytes,
/// blocksize 64), as transformers' `load_in_4bit` does; GGUF-quantized tensors stay as they are.
pub fn quantize_base(files: &mut ModelFiles, format: &str) -> Result<usize, LoadError> {
    if format != "nf4" {
        return Err(LoadError::invalid(
            &files.checkpoint.origin,
            format!("unknown --quantize `{format}` (supported: nf4)"),
        ));
    }
    let mut n = 0;
    for (name, t) in files.checkpoint.tensors.iter_mut() {
        if let (true, HostData::F32(v)) =
            (crate::quant::bnb::is_quantized_by_default(name), &t.data)
        {
            let q = crate::quant::nf4::quantize_nf4_shaped(v, &t.shape, 64).map_err(|e| {
                LoadError::invalid(&files.checkpoint.origin, format!("{name}: {e}"))
            })?;
            t.data = HostData::Nf4(q);
            n += 1;
        }
    }
    Ok(n)
}

/// Read and upload a model in one go, optionally quantizing the base (`quantize = Some("nf4")`).
pub fn load_model(
    src: ModelSource<'_>,
    device: &Device,
    quantize: Option<&str>,
) -> Result<LoadedModel, LoadError> {
    let mut files = read_model(src)?;
    if let Some(format) = quantize {
        quantize_base(&mut files, format)?;
    }
    let model = build_llama(&files.config, &files.checkpoint, device)?;
    Ok(LoadedModel {
        model,
        tokenizer: files.tokenizer,
        chat_template: files.chat_template,
    })
}

fn read_hf(dir: &dyn FileSource) -> Result<ModelFiles, LoadError> {
    let (config, checkpoint) = hf::load_folder(dir)?;
    let tokenizer = match dir.read("tokenizer.json")? {
        Some(blob) => Some(
            tokenizers::Tokenizer::from_bytes((*blob).as_ref())
                .map_err(|e| LoadError::invalid(dir.display("tokenizer.json"), e.to_string()))?,
        ),
        None => None,
    };
    let chat_template = match dir.read("tokenizer_config.json")? {
        Some(blob) => {
            let file = dir.display("tokenizer_config.json");
            let v: serde_json::Value = serde_json::from_slice((*blob).as_ref())
                .map_err(|cause| LoadError::Json { file, cause })?;
            let token = |k: &str| match v.get(k) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(o) => o
                    .get("content")
                    .and_then(|c| c.as_str())
                    .unwrap_or("")
                    .to_string(),
                None => String::new(),
            };
            v.get("chat_template")
                .and_then(|t| t.as_str())
                .map(|t| ChatTemplate::new(t.to_string(), token("bos_token"), token("eos_token")))
        }
        None => None,
    };
    Ok(ModelFiles {
        config,
        checkpoint,
        tokenizer,
        chat_template,
        format: "hf-safetensors".into(),
    })
}

/// GGUF tensor name → HF name.
fn hf_name(gguf_name: &str) -> Option<String> {
    let fixed = match gguf_name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(n) = fixed {
        return Some(n.to_string());
    }
    let rest = gguf_name.strip_prefix("blk.")?;
    let (layer, tail) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let module = match tail {
        "attn_norm.weight" => "input_layernorm",
        "attn_q.weight" => "self_attn.q_proj",
        "attn_k.weight" => "self_attn.k_proj",
        "attn_v.weight" => "self_attn.v_proj",
        "attn_output.weight" => "self_attn.o_proj",
        "ffn_norm.weight" => "post_attention_layernorm",
        "ffn_gate.weight" => "mlp.gate_proj",
        "ffn_up.weight" => "mlp.up_proj",
        "ffn_down.weight" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{module}.weight"))
}

/// Undo llama.cpp's Q/K permutation (`convert_hf_to_gguf.py: permute`) on whole rows: HF row
/// `h·D + s·D/2 + j` is GGUF row `h·D + 2j + s`. Works on packed rows, so quantized data stays packed.
fn unpermute_rows(bytes: &[u8], rows: usize, n_head: usize) -> Vec<u8> {
    let row_len = bytes.len() / rows;
    let d = rows / n_head;
    let mut out = Vec::with_capacity(bytes.len());
    for h in 0..n_head {
        for s in 0..2 {
            for j in 0..d / 2 {
                let src = h * d + 2 * j + s;
                out.extend_from_slice(&bytes[src * row_len..(src + 1) * row_len]);
            }
        }
    }
    out
}

fn gguf_config(g: &Gguf, file: &str) -> Result<LlamaConfig, LoadError> {
    let wrap = |cause| LoadError::Gguf {
        file: file.into(),
        cause,
    };
    let arch = g.get_str("general.architecture").map_err(wrap)?;
    if arch != "llama" {
        return Err(LoadError::Architecture {
            file: file.into(),
            arch: arch.into(),
        });
    }
    let uint = |k: &str| -> Result<usize, LoadError> {
        let v = g.get_u64(&format!("llama.{k}")).map_err(wrap)? as usize;
        if v == 0 {
            return Err(LoadError::invalid(
                file,
                format!("metadata `llama.{k}` must be positive"),
            ));
        }
        Ok(v)
    };
    let hidden = uint("embedding_length")?;
    let heads = uint("attention.head_count")?;
    let kv = g
        .get_opt_u64("llama.attention.head_count_kv")
        .map_err(wrap)?
        .map_or(heads, |v| v as usize);
    let head_dim = g
        .get_opt_u64("llama.attention.key_length")
        .map_err(wrap)?
        .map_or(hidden / heads.max(1), |v| v as usize);
    if kv == 0 || heads % kv != 0 || head_dim % 2 != 0 {
        return Err(LoadError::invalid(
            file,
            format!("inconsistent heads: {heads} query, {kv} kv, head_dim {head_dim}"),
        ));
    }
    let vocab = match g.metadata.get("tokenizer.ggml.tokens") {
        Some(MetaValue::Array(a)) => a.len(),
        _ => g
            .get_opt_u64("llama.vocab_size")
            .map_err(wrap)?
            .unwrap_or(0) as usize,
    };
    let tied = g.tensor("output.weight").is_none();
    let eos = g.get_opt_u64("tokenizer.ggml.eos_token_id").map_err(wrap)?;
    Ok(LlamaConfig {
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: uint("feed_forward_length")?,
        num_hidden_layers: uint("block_count")?,
        num_attention_heads: heads,
        num_key_value_heads: kv,
        head_dim,
        rms_norm_eps: g
            .get_opt_f64("llama.attention.layer_norm_rms_epsilon")
            .map_err(wrap)?
            .unwrap_or(1e-5),
        rope_theta: g
            .get_opt_f64("llama.rope.freq_base")
            .map_err(wrap)?
            .unwrap_or(10000.0),
        rope_scaling: None,
        tie_word_embeddings: tied,
        max_position_embeddings: g
            .get_opt_u64("llama.context_length")
            .map_err(wrap)?
            .unwrap_or(2048) as usize,
        bos_token_id: g
            .get_opt_u64("tokenizer.ggml.bos_token_id")
            .map_err(wrap)?
            .map(|x| x as u32),
        eos_token_ids: eos.map(|x| vec![x as u32]).unwrap_or_default(),
    })
}

fn read_gguf(bytes: &[u8], file: &str) -> Result<ModelFiles, LoadError> {
    let wrap = |cause| LoadError::Gguf {
        file: file.into(),
        cause,
    };
    let g = Gguf::parse(bytes).map_err(wrap)?;
    for info in &g.tensors {
        info.ty().map_err(wrap)?;
    }
    let config = gguf_config(&g, file)?;
    if g.metadata.contains_key("llama.rope.scaling.type") {
        let kind = g.get_str("llama.rope.scaling.type").map_err(wrap)?;
        if kind != "none" {
            return Err(LoadError::invalid(
                file,
                format!("rope scaling `{kind}` in GGUF is not supported"),
            ));
        }
    }
    let mut checkpoint = Checkpoint {
        tensors: BTreeMap::new(),
        origin: file.into(),
    };
    for info in &g.tensors {
        let Some(name) = hf_name(&info.name) else {
            continue;
        };
        let ty = info.ty().map_err(wrap)?;
        let raw = g.tensor_bytes(bytes, info).map_err(wrap)?;
        let shape: Vec<usize> = info.dims.iter().rev().map(|&d| d as usize).collect();
        let rows = if shape.len() == 2 { shape[0] } else { 1 };
        let n_head = if name.ends_with("q_proj.weight") {
            Some(config.num_attention_heads)
        } else if name.ends_with("k_proj.weight") {
            Some(config.num_key_value_heads)
        } else {
            None
        };
        let packed = match n_head {
            Some(h) if rows % (2 * h) == 0 => unpermute_rows(raw, rows, h),
            Some(_) => {
                return Err(LoadError::invalid(
                    file,
                    format!("tensor {} rows do not split into heads", info.name),
                ));
            }
            None => raw.to_vec(),
        };
        let data = match ty {
            crate::quant::ggml::GgmlType::F32 => {
                HostData::F32(bytemuck::pod_collect_to_vec::<u8, f32>(&packed))
            }
            other => HostData::Ggml {
                ty: other,
                bytes: packed,
            },
        };
        checkpoint.tensors.insert(name, HostTensor { shape, data });
    }
    let tokenizer = tokenizer_from_gguf(&g).map_err(|e| LoadError::invalid(file, e.to_string()))?;
    let chat_template =
        ChatTemplate::from_gguf(&g).map_err(|e| LoadError::invalid(file, e.to_string()))?;
    Ok(ModelFiles {
        config,
        checkpoint,
        tokenizer: Some(tokenizer),
        chat_template,
        format: format!("gguf v{}", g.version),
    })
}

/// Check every expected tensor exists with the right shape, then upload to `device`
/// (block-quantized decoder linears stay packed on GPU devices).
pub fn build_llama(
    config: &LlamaConfig,
    ckpt: &Checkpoint,
    device: &Device,
) -> Result<Llama, LoadError> {
    let take = |name: &str, want: &[usize]| ckpt.take_f32(name, want);
    let expected: BTreeMap<String, Vec<usize>> = config.expected_tensors().into_iter().collect();
    let get2 = |name: &str| -> Result<Tensor<2>, LoadError> {
        let shape = &expected[name];
        let v = take(name, shape)?;
        Ok(Tensor::from_data(
            TensorData::new(v, [shape[0], shape[1]]),
            device,
        ))
    };
    // Quantized decoder linears stay packed where our WGSL kernels run; elsewhere (the CPU
    // backend) and for layouts the kernel does not read they are dequantized on upload.
    let packed = crate::kernels::has_wgsl_kernels(device);
    let embed_tokens = get2("model.embed_tokens.weight")?;
    let lm_head = if config.tie_word_embeddings {
        None
    } else {
        Some(get2("lm_head.weight")?)
    };
    let mut layers = Vec::with_capacity(config.num_hidden_layers);
    for l in 0..config.num_hidden_layers {
        let p = format!("model.layers.{l}");
        let lin = |m: &str| -> Result<AdaptedLinear, LoadError> {
            let name = format!("{p}.{m}.weight");
            match ckpt.take_packed(&name, &expected[&name]).filter(|_| packed) {
                Some(host) => Ok(AdaptedLinear {
                    base: BaseLinear::Packed(PackedWeight::upload(&host, device)),
                    adapter: None,
                }),
                None => get2(&name).map(AdaptedLinear::new),
            }
        };
        let self_attn = Attention {
            q_proj: lin("self_attn.q_proj")?,
            k_proj: lin("self_attn.k_proj")?,
            v_proj: lin("self_attn.v_proj")?,
            o_proj: lin("self_attn.o_proj")?,
            n_heads: config.num_attention_heads,
            n_kv_heads: config.num_key_value_heads,
            head_dim: config.head_dim,
        };
        let mlp = Mlp {
            gate_proj: lin("mlp.gate_proj")?,
            up_proj: lin("mlp.up_proj")?,
            down_proj: lin("mlp.down_proj")?,
        };
        let norm = |m: &str| -> Result<Tensor<1>, LoadError> {
            let name = format!("{p}.{m}.weight");
            let v = take(&name, &expected[&name])?;
            Ok(Tensor::from_data(
                TensorData::new(v, [config.hidden_size]),
                device,
            ))
        };
        layers.push(Block {
            input_layernorm: norm("input_layernorm")?,
            self_attn,
            post_attention_layernorm: norm("post_attention_layernorm")?,
            mlp,
        });
    }
    let norm_v = take("model.norm.weight", &[config.hidden_size])?;
    Ok(Llama {
        config: config.clone(),
        embed_tokens,
        layers,
        norm: Tensor::from_data(TensorData::new(norm_v, [config.hidden_size]), device),
        lm_head,
        inv_freq: config_inv_freq(config),
    })
}
