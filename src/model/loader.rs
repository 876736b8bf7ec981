//! From files to a model on a device: HF folders and GGUF files become one [`Checkpoint`] in HF
//! naming and layout (GGUF tensors renamed by role, the architecture's load quirks undone),
//! validated against the config, then uploaded as a [`Decoder`].

use super::arch::parse_gguf_config;
use super::attention::Attention;
use super::config::DecoderConfig;
use super::decoder::{Block, Decoder, Mlp, RmsNorm, config_inv_freq};
use super::linear::{AdaptedLinear, BaseLinear};
use super::roles::Role;
use super::vocab::VocabMatrix;
use super::weights::{Checkpoint, HostData, HostTensor, StoredType, TensorMeta};
use crate::io::chat::ChatTemplate;
use crate::io::gguf::Gguf;
use crate::io::tokenizer::tokenizer_from_gguf;
use crate::io::{Blob, FileSource, LoadError, hf};
use crate::kernels::qmatmul::PackedWeight;
use crate::quant::ggml::GgmlType;
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
    pub config: DecoderConfig,
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
    pub model: Decoder,
    /// Its tokenizer, if the files had one.
    pub tokenizer: Option<tokenizers::Tokenizer>,
    /// Its chat template, if the files had one.
    pub chat_template: Option<ChatTemplate>,
}

/// Read a model's files into host memory (no device needed: `inspect` stops here).
pub fn read_model(src: ModelSource<'_>) -> Result<ModelFiles, LoadError> {
    let mut files = match src {
        ModelSource::HfFolder(dir) => read_hf(dir),
        ModelSource::Gguf { bytes, name } => read_gguf((*bytes).as_ref(), &name),
    }?;
    // The family's end-of-turn token (Gemma's `<end_of_turn>`) also ends generation.
    let eot = files.config.arch.end_of_turn_token();
    if let Some(id) = eot.and_then(|t| files.tokenizer.as_ref()?.token_to_id(t))
        && !files.config.is_stop(id)
    {
        files.config.stop_token_ids.push(id);
    }
    Ok(files)
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
    let model = build_decoder(&files.config, &files.checkpoint, device)?;
    Ok(LoadedModel {
        model,
        tokenizer: files.tokenizer,
        chat_template: files.chat_template,
    })
}

fn read_hf(dir: &dyn FileSource) -> Result<ModelFiles, LoadError> {
    let (config, checkpoint) = hf::load_folder(dir)?;
    let (tokenizer, chat_template) = hf_tokenizer(dir)?;
    Ok(ModelFiles {
        config,
        checkpoint,
        tokenizer,
        chat_template,
        format: "hf-safetensors".into(),
    })
}

/// A chat template saved on its own (what transformers' `save_pretrained` writes since 4.43).
const CHAT_TEMPLATE_JINJA: &str = "chat_template.jinja";

/// The tokenizer (`tokenizer.json`) and chat template (`chat_template.jinja`, else
/// `tokenizer_config.json`'s `chat_template`, as transformers' tokenizer loads it) of an HF folder,
/// when it has them.
fn hf_tokenizer(
    dir: &dyn FileSource,
) -> Result<(Option<tokenizers::Tokenizer>, Option<ChatTemplate>), LoadError> {
    let tokenizer = match dir.read("tokenizer.json")? {
        Some(blob) => Some(
            tokenizers::Tokenizer::from_bytes((*blob).as_ref())
                .map_err(|e| LoadError::invalid(dir.display("tokenizer.json"), e.to_string()))?,
        ),
        None => None,
    };
    let config = match dir.read("tokenizer_config.json")? {
        Some(blob) => {
            let file = dir.display("tokenizer_config.json");
            let v: serde_json::Value =
                serde_json::from_slice((*blob).as_ref()).map_err(|cause| LoadError::Json {
                    file: file.clone(),
                    cause,
                })?;
            Some((file, v))
        }
        None => None,
    };
    let token = |k: &str| match config.as_ref().and_then(|(_, v)| v.get(k)) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(o) => o
            .get("content")
            .and_then(|c| c.as_str())
            .unwrap_or("")
            .to_string(),
        None => String::new(),
    };
    // transformers' tokenizer: a `chat_template.jinja` file takes priority over the config's entry.
    let source = match dir.read(CHAT_TEMPLATE_JINJA)? {
        Some(blob) => {
            let file = dir.display(CHAT_TEMPLATE_JINJA);
            let text = std::str::from_utf8((*blob).as_ref())
                .map_err(|_| LoadError::invalid(&file, "not UTF-8 text"))?;
            Some((file, text.to_string()))
        }
        None => config.as_ref().and_then(|(file, v)| {
            let text = v.get("chat_template").and_then(|t| t.as_str())?;
            Some((file.clone(), text.to_string()))
        }),
    };
    let chat_template = source.map(|(file, text)| {
        ChatTemplate::new(text, token("bos_token"), token("eos_token")).with_origin(file)
    });
    Ok((tokenizer, chat_template))
}

/// llama.cpp's Q/K row order (`convert_hf_to_gguf.py: LlamaModel.permute`, for its interleaved
/// RoPE): HF row `h·D + s·D/2 + j` is GGUF row `h·D + 2j + s`. Moves whole rows of `bytes` from
/// HF to GGUF order (`to_gguf`) or back, so quantized data stays packed.
pub(crate) fn permute_qk_rows(bytes: &[u8], rows: usize, n_head: usize, to_gguf: bool) -> Vec<u8> {
    if rows == 0 || n_head == 0 || !rows.is_multiple_of(2 * n_head) {
        return bytes.to_vec();
    }
    let row_len = bytes.len() / rows;
    let d = rows / n_head;
    let mut out = vec![0u8; bytes.len()];
    for hf in 0..rows {
        let (h, s, j) = (hf / d, hf % d / (d / 2), hf % (d / 2));
        let gguf = h * d + 2 * j + s;
        let (dst, src) = if to_gguf { (gguf, hf) } else { (hf, gguf) };
        out[dst * row_len..][..row_len].copy_from_slice(&bytes[src * row_len..][..row_len]);
    }
    out
}

/// One GGUF tensor the model uses, checked: its HF name and shape, where its data lies, how to
/// undo the converter's changes (Q/K row permutation, norm shift).
struct GgufEntry<'g> {
    info: &'g crate::io::gguf::TensorInfo,
    name: String,
    shape: Vec<usize>,
    ty: GgmlType,
    /// Heads of a permuted Q/K projection.
    n_head: Option<usize>,
    /// What the converter added to this norm (Gemma's: 1).
    shift: f32,
}

/// The parsed header of a GGUF file, its config and the tensors the model uses, all checked (types,
/// data ranges, head splits) before any tensor data is touched.
fn gguf_entries<'g>(
    g: &'g Gguf,
    len: usize,
    file: &str,
) -> Result<(DecoderConfig, Vec<GgufEntry<'g>>), LoadError> {
    let wrap = |cause| LoadError::Gguf {
        file: file.into(),
        cause,
    };
    for info in &g.tensors {
        info.ty().map_err(wrap)?;
    }
    let config = parse_gguf_config(g, file, len)?;
    let arch = config.arch;
    let mut entries = Vec::new();
    for info in &g.tensors {
        let Some((role, layer)) = Role::from_gguf(&info.name) else {
            continue;
        };
        let ty = info.ty().map_err(wrap)?;
        // `Gguf::parse` checked the dims' product, so each dim fits.
        let shape: Vec<usize> = info.dims.iter().rev().map(|&d| d as usize).collect();
        let rows = if shape.len() == 2 { shape[0] } else { 1 };
        let n_head = match role {
            Role::AttnQ if arch.gguf_permutes_qk() => Some(config.num_attention_heads),
            Role::AttnK if arch.gguf_permutes_qk() => Some(config.num_key_value_heads),
            _ => None,
        };
        if n_head.is_some_and(|h| rows == 0 || !rows.is_multiple_of(2 * h)) {
            return Err(LoadError::invalid(
                file,
                format!("tensor {} rows do not split into heads", info.name),
            ));
        }
        // What llama.cpp's converter added to this tensor (Gemma's norms: 1), undone here.
        let shift = if role.is_norm() {
            arch.gguf_norm_shift()
        } else {
            0.0
        };
        if shift != 0.0 && ty != GgmlType::F32 {
            return Err(LoadError::invalid(
                file,
                format!("norm tensor {} must be F32", info.name),
            ));
        }
        entries.push(GgufEntry {
            info,
            name: arch.hf_name(role, layer),
            shape,
            ty,
            n_head,
            shift,
        });
    }
    Ok((config, entries))
}

fn read_gguf(bytes: &[u8], file: &str) -> Result<ModelFiles, LoadError> {
    let wrap = |cause| LoadError::Gguf {
        file: file.into(),
        cause,
    };
    let g = Gguf::parse(bytes).map_err(wrap)?;
    let (config, entries) = gguf_entries(&g, bytes.len(), file)?;
    let mut checkpoint = Checkpoint {
        tensors: BTreeMap::new(),
        origin: file.into(),
    };
    for e in entries {
        let raw = g.tensor_bytes(bytes, e.info).map_err(wrap)?;
        let packed = match e.n_head {
            Some(h) => permute_qk_rows(raw, e.shape[0], h, false),
            None => raw.to_vec(),
        };
        let data = match e.ty {
            GgmlType::F32 => {
                let mut v = bytemuck::pod_collect_to_vec::<u8, f32>(&packed);
                if e.shift != 0.0 {
                    v.iter_mut().for_each(|x| *x -= e.shift);
                }
                HostData::F32(v)
            }
            other => HostData::Ggml {
                ty: other,
                bytes: packed,
            },
        };
        let shape = e.shape;
        checkpoint
            .tensors
            .insert(e.name, HostTensor { shape, data });
    }
    let (tokenizer, chat_template) = gguf_tokenizer(&g, file)?;
    Ok(ModelFiles {
        config,
        checkpoint,
        tokenizer: Some(tokenizer),
        chat_template,
        format: format!("gguf v{}", g.version),
    })
}

/// The tokenizer and chat template a GGUF carries.
fn gguf_tokenizer(
    g: &Gguf,
    file: &str,
) -> Result<(tokenizers::Tokenizer, Option<ChatTemplate>), LoadError> {
    let tokenizer = tokenizer_from_gguf(g).map_err(|e| LoadError::invalid(file, e.to_string()))?;
    let chat_template = ChatTemplate::from_gguf(g)
        .map_err(|e| LoadError::invalid(file, e.to_string()))?
        .map(|t| t.with_origin(file.to_string()));
    Ok((tokenizer, chat_template))
}

/// What `inspect` shows of a model, read from headers and metadata only: no tensor is copied,
/// converted or dequantized.
pub struct ModelInfo {
    /// Hyper-parameters.
    pub config: DecoderConfig,
    /// Shape, type and size of every weight, by HF name.
    pub tensors: BTreeMap<String, TensorMeta>,
    /// Whether the files carry a tokenizer (it is built, so a broken one is reported).
    pub has_tokenizer: bool,
    /// Whether the files carry a chat template.
    pub has_chat_template: bool,
    /// `hf-safetensors` or `gguf vN`.
    pub format: String,
}

impl ModelInfo {
    /// The tensors grouped by storage type, as [`tensor_groups`] groups a loaded checkpoint.
    pub fn groups(&self) -> Vec<crate::model::weights::TensorGroup> {
        let linears = linear_names(&self.config);
        crate::model::weights::group_tensors(
            self.tensors.iter().map(|(n, m)| (n.as_str(), m)),
            |name| linears.contains(name),
        )
    }
}

/// Read what `inspect` shows of a model from its headers and metadata (see [`ModelInfo`]).
pub fn read_model_info(src: ModelSource<'_>) -> Result<ModelInfo, LoadError> {
    match src {
        ModelSource::HfFolder(dir) => {
            let (config, tensors) = hf::folder_info(dir)?;
            let (tokenizer, chat_template) = hf_tokenizer(dir)?;
            Ok(ModelInfo {
                config,
                tensors,
                has_tokenizer: tokenizer.is_some(),
                has_chat_template: chat_template.is_some(),
                format: "hf-safetensors".into(),
            })
        }
        ModelSource::Gguf { bytes, name } => {
            let bytes = (*bytes).as_ref();
            let g = Gguf::parse(bytes).map_err(|cause| LoadError::Gguf {
                file: name.clone(),
                cause,
            })?;
            let (config, entries) = gguf_entries(&g, bytes.len(), &name)?;
            let tensors = entries
                .into_iter()
                .map(|e| {
                    let meta = TensorMeta {
                        bytes: e.info.byte_len().map_err(|cause| LoadError::Gguf {
                            file: name.clone(),
                            cause,
                        })?,
                        ty: match e.ty {
                            GgmlType::F32 => StoredType::F32,
                            other => StoredType::Ggml(other),
                        },
                        shape: e.shape,
                    };
                    Ok((e.name, meta))
                })
                .collect::<Result<_, LoadError>>()?;
            let (_, chat_template) = gguf_tokenizer(&g, &name)?;
            Ok(ModelInfo {
                config,
                tensors,
                has_tokenizer: true,
                has_chat_template: chat_template.is_some(),
                format: format!("gguf v{}", g.version),
            })
        }
    }
}

/// The decoder linears' roles: block-quantized ones stay packed on GPU devices.
pub(crate) const LINEAR_ROLES: [Role; 7] = [
    Role::AttnQ,
    Role::AttnK,
    Role::AttnV,
    Role::AttnO,
    Role::FfnGate,
    Role::FfnUp,
    Role::FfnDown,
];

/// HF names of the decoder linears (the tensors that stay packed on GPU devices).
fn linear_names(c: &DecoderConfig) -> std::collections::BTreeSet<String> {
    (0..c.num_hidden_layers)
        .flat_map(|l| LINEAR_ROLES.map(|r| c.arch.hf_name(r, Some(l))))
        .collect()
}

/// `files`' tensors grouped by storage type, with their size in the file and on a GPU device.
pub fn tensor_groups(files: &ModelFiles) -> Vec<crate::model::weights::TensorGroup> {
    let linears = linear_names(&files.config);
    files.checkpoint.groups(|name| linears.contains(name))
}

/// Check every expected tensor exists with the right shape, then upload to `device`
/// (block-quantized decoder linears stay packed on GPU devices).
pub fn build_decoder(
    config: &DecoderConfig,
    ckpt: &Checkpoint,
    device: &Device,
) -> Result<Decoder, LoadError> {
    let arch = config.arch;
    let expected: BTreeMap<String, Vec<usize>> = config.expected_tensors().into_iter().collect();
    let tensor = |r: Role, layer: Option<usize>| -> Result<(String, Vec<f32>), LoadError> {
        let name = arch.hf_name(r, layer);
        let v = ckpt.take_f32(&name, &expected[&name])?;
        Ok((name, v))
    };
    let get2 = |r: Role, layer: Option<usize>| -> Result<Tensor<2>, LoadError> {
        let (name, v) = tensor(r, layer)?;
        let shape = &expected[&name];
        Ok(Tensor::from_data(
            TensorData::new(v, [shape[0], shape[1]]),
            device,
        ))
    };
    let get1 = |r: Role, layer: Option<usize>| -> Result<Tensor<1>, LoadError> {
        let (_, v) = tensor(r, layer)?;
        let n = v.len();
        Ok(Tensor::from_data(TensorData::new(v, [n]), device))
    };
    let norm = |r: Role, layer: Option<usize>| -> Result<RmsNorm, LoadError> {
        Ok(RmsNorm {
            weight: get1(r, layer)?,
            style: config.norm_style,
            eps: config.rms_norm_eps,
        })
    };
    let opt_norm = |on: bool, r: Role, l: usize| on.then(|| norm(r, Some(l))).transpose();
    // Quantized decoder linears stay packed where our WGSL kernels run; elsewhere (the CPU
    // backend) and for layouts the kernel does not read they are dequantized on upload.
    let packed = crate::kernels::has_wgsl_kernels(device);
    let vocab = |r: Role| -> Result<VocabMatrix, LoadError> {
        let (name, v) = tensor(r, None)?;
        let shape = &expected[&name];
        Ok(VocabMatrix::from_host(v, shape[0], shape[1], device))
    };
    let embed_tokens = vocab(Role::TokenEmbd)?;
    let lm_head = if config.tie_word_embeddings {
        None
    } else {
        Some(vocab(Role::Output)?)
    };
    let mut layers = Vec::with_capacity(config.num_hidden_layers);
    for l in 0..config.num_hidden_layers {
        let lin = |r: Role, bias: Option<Role>| -> Result<AdaptedLinear, LoadError> {
            let name = arch.hf_name(r, Some(l));
            let base = match ckpt.take_packed(&name, &expected[&name]).filter(|_| packed) {
                Some(host) => BaseLinear::Packed(PackedWeight::upload(&host, device)),
                None => BaseLinear::Dense(get2(r, Some(l))?),
            };
            let bias = match bias.filter(|_| config.qkv_bias) {
                Some(b) => Some(get1(b, Some(l))?),
                None => None,
            };
            Ok(AdaptedLinear {
                base,
                bias,
                adapter: None,
            })
        };
        let self_attn = Attention {
            q_proj: lin(Role::AttnQ, Some(Role::AttnQBias))?,
            k_proj: lin(Role::AttnK, Some(Role::AttnKBias))?,
            v_proj: lin(Role::AttnV, Some(Role::AttnVBias))?,
            o_proj: lin(Role::AttnO, None)?,
            n_heads: config.num_attention_heads,
            n_kv_heads: config.num_key_value_heads,
            head_dim: config.head_dim,
            q_norm: opt_norm(config.qk_norm, Role::AttnQNorm, l)?,
            k_norm: opt_norm(config.qk_norm, Role::AttnKNorm, l)?,
            scale: config.attention_scale(),
        };
        let mlp = Mlp {
            gate_proj: lin(Role::FfnGate, None)?,
            up_proj: lin(Role::FfnUp, None)?,
            down_proj: lin(Role::FfnDown, None)?,
            activation: config.activation,
        };
        layers.push(Block {
            attn_norm: norm(Role::AttnNorm, Some(l))?,
            self_attn,
            attn_post_norm: opt_norm(config.sandwich_norms, Role::AttnPostNorm, l)?,
            ffn_norm: norm(Role::FfnNorm, Some(l))?,
            mlp,
            ffn_post_norm: opt_norm(config.sandwich_norms, Role::FfnPostNorm, l)?,
        });
    }
    let (inv_freq, inv_freq_local) = config_inv_freq(config);
    Ok(Decoder {
        config: config.clone(),
        embed_tokens,
        layers,
        norm: norm(Role::OutputNorm, None)?,
        lm_head,
        inv_freq,
        inv_freq_local,
    })
}
