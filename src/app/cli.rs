//! The command line: `wgtune generate | eval | inspect | bench | train | merge | export | quantize | gui`
//! (no command opens the desktop app). Every command prints
//! one readable line on error and exits non-zero; nothing user-supplied can panic it.

use super::files::{DirSource, model_source, read_blob, write_atomic};
use crate::backend::{BackendChoice, SelectedBackend, select};
use crate::io::chat::ChatMessage;
use crate::model::decoder::causal_lm_loss;
use crate::model::generate::{SamplingConfig, generate};
use crate::model::loader::{LoadedModel, load_model};
use crate::model::read_f32;
use crate::train::data::{
    BadLine, DataOptions, Example, LoadReport, Tokenize, decode_text, load_examples_with,
};
use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// wgtune: finetune small language models on any GPU through WebGPU (or on the CPU).
#[derive(Parser, Debug)]
#[command(name = "wgtune", version, about)]
pub struct Cli {
    /// What to do (none: open the desktop app).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Sub-commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Continue a prompt with the model (KV cache; greedy, temperature, top-p).
    Generate(GenerateArgs),
    /// Mean loss and perplexity of a model on a data file; optional dump of logits/loss/grads.
    Eval(EvalArgs),
    /// Architecture, parameter count, tensor types and memory of a model.
    Inspect(InspectArgs),
    /// Forward and generation throughput of a model on the chosen backend.
    Bench(BenchArgs),
    /// Train a LoRA or OFTv2 adapter (headless with --no-gui); writes a peft adapter to --out.
    Train(Box<super::train::TrainArgs>),
    /// Merge a peft adapter into the base and write an HF model folder or a GGUF model file.
    Merge(MergeArgs),
    /// Write a peft LoRA adapter as a llama.cpp GGUF adapter (for llama-cli --lora, Ollama ADAPTER).
    Export(super::export::ExportArgs),
    /// Write a bitsandbytes 4-bit (NF4) HF checkpoint of a model.
    Quantize(super::quantize::QuantizeArgs),
    /// Open the desktop app (also what `wgtune` with no command does).
    #[cfg(not(target_arch = "wasm32"))]
    Gui(super::gui::GuiArgs),
}

/// Options shared by every command that runs a model.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// HF model folder (config.json + *.safetensors + tokenizer.json) or a .gguf file.
    #[arg(long)]
    pub model: PathBuf,
    /// auto (wgpu on a real GPU, else CPU), wgpu, or cpu.
    #[arg(long, default_value = "auto")]
    pub backend: BackendChoice,
    /// Quantize the base on load (nf4: decoder-block linears to bitsandbytes NF4).
    #[arg(long)]
    pub quantize: Option<String>,
}

/// `wgtune generate`.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Text to continue.
    #[arg(long)]
    pub prompt: String,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// peft adapter folder (LoRA or OFT) to apply.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Maximum number of new tokens.
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Nucleus sampling threshold.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Sampler seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// `wgtune eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// jsonl (or JSON array) data: `input_ids` (+ optional `labels`), `text`, or alpaca records.
    #[arg(long)]
    pub data: PathBuf,
    /// Evaluate only the first N records.
    #[arg(long)]
    pub limit: Option<usize>,
    /// peft adapter folder (LoRA or OFT) to apply.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Write `logits` [B,T,V] and `loss` [1] of the whole file as one batch to this safetensors file.
    #[arg(long)]
    pub dump: Option<PathBuf>,
    /// With --adapter and --dump: also dump the loss gradient of every adapter tensor.
    #[arg(long)]
    pub grads: bool,
}

/// `wgtune inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// HF model folder or .gguf file.
    #[arg(long)]
    pub model: PathBuf,
}

/// `wgtune merge`.
#[derive(Args, Debug)]
pub struct MergeArgs {
    /// Base model: HF folder or .gguf file.
    #[arg(long)]
    pub model: PathBuf,
    /// peft adapter folder (LoRA, OFT, QLoRA, QOFT, LoftQ; a LoRA-PAR adapter is a LoRA).
    #[arg(long)]
    pub adapter: PathBuf,
    /// Output: an HF folder (`--format hf`) or a .gguf file (`--format gguf`).
    #[arg(long)]
    pub out: PathBuf,
    /// hf: config.json + model.safetensors (f32) + tokenizer files; gguf: one llama.cpp model file.
    #[arg(long, value_enum, default_value = "hf")]
    pub format: super::merge::MergeFormat,
    /// GGUF tensor types, as `llama-quantize` picks them: same (each tensor's type in the base),
    /// f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k (every matrix that type),
    /// q6_k, q4_k_m, q5_k_m. Only with `--format gguf`.
    #[arg(long, value_parser = super::merge::parse_mix)]
    pub quant: Option<crate::io::gguf_model::Mix>,
    /// Quantize the base on load as it was for training (nf4 for a QLoRA adapter on an HF base).
    #[arg(long)]
    pub quantize: Option<String>,
}

/// `wgtune bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Model to benchmark (HF folder or .gguf); optional with --methods (a random-init model of
    /// the shape flags) and not used with --kernels.
    #[arg(long, required_unless_present_any = ["kernels", "methods", "loss_memory"])]
    pub model: Option<PathBuf>,
    /// auto (wgpu on a real GPU, else CPU), wgpu, or cpu.
    #[arg(long, default_value = "auto")]
    pub backend: BackendChoice,
    /// Quantize the base on load (nf4).
    #[arg(long)]
    pub quantize: Option<String>,
    /// Kernel micro-benchmarks instead: fused quantized matmul (NF4 and every ggml block type) vs
    /// burn's f32 matmul on SmolLM2's and Gemma 3 270M's projection shapes (needs the wgpu backend).
    #[arg(long)]
    pub kernels: bool,
    /// Loss memory benchmark instead: peak memory of the causal-LM loss + backward on full
    /// logits vs the chunked loss training uses, for a head of --vocab x --hidden and
    /// --batch x --seq (default 512) positions.
    #[arg(long)]
    pub loss_memory: bool,
    /// Rows of the input (batch · seq) for --kernels.
    #[arg(long, default_value_t = 1024)]
    pub rows: usize,
    /// Training-step benchmark of these methods instead (comma list of lora, oft, oft-v1, qlora,
    /// qoft): forward + backward + AdamW per step, timed per phase, with peak device memory.
    #[arg(long, value_delimiter = ',')]
    pub methods: Vec<String>,
    /// Random-init model of this HF config.json (any supported architecture) for --methods,
    /// instead of the shape flags below.
    #[arg(long, conflicts_with = "model")]
    pub config: Option<PathBuf>,
    /// Random-init model shape for --methods without --model: vocabulary.
    #[arg(long, default_value_t = 32000)]
    pub vocab: usize,
    /// Hidden size.
    #[arg(long, default_value_t = 512)]
    pub hidden: usize,
    /// MLP intermediate size.
    #[arg(long, default_value_t = 1376)]
    pub intermediate: usize,
    /// Decoder blocks.
    #[arg(long, default_value_t = 8)]
    pub layers: usize,
    /// Attention heads.
    #[arg(long, default_value_t = 8)]
    pub heads: usize,
    /// Sequences per step for --methods.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Sequence length: tokens of the forward benchmark (default 128) or per sequence of a
    /// training step (default 256).
    #[arg(long)]
    pub seq: Option<usize>,
    /// New tokens in the generation benchmark.
    #[arg(long, default_value_t = 32)]
    pub gen_tokens: usize,
    /// Sequences in the generation benchmark: with more than one, N continuations of the prompt
    /// (row `r` seeded `r`) are timed both one at a time and as one batch, alternately.
    #[arg(long, default_value_t = 1)]
    pub gen_batch: usize,
    /// Sampling temperature of the generation benchmark (0: greedy).
    #[arg(long, default_value_t = 0.0)]
    pub gen_temperature: f32,
    /// Timed repetitions after one warm-up (median reported).
    #[arg(long, default_value_t = 3)]
    pub iters: usize,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// What `text` adds to the already printed `shown`: the part after their common prefix (cut at a
/// character boundary), since a later token can change how earlier bytes decode.
fn new_text<'a>(shown: &str, text: &'a str) -> &'a str {
    let common = text
        .char_indices()
        .zip(shown.chars())
        .take_while(|((_, a), b)| a == b)
        .last()
        .map_or(0, |((i, c), _)| i + c.len_utf8());
    &text[common..]
}

/// Run the parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    let Some(command) = cli.command else {
        return super::gui::run_gui(super::gui::GuiArgs::default());
    };
    match command {
        Command::Gui(a) => super::gui::run_gui(a),
        Command::Generate(a) => cmd_generate(a),
        Command::Eval(a) => cmd_eval(a),
        Command::Inspect(a) => cmd_inspect(a),
        Command::Bench(a) => crate::bench::cmd_bench(a),
        Command::Train(a) => super::train::cmd_train(*a),
        Command::Merge(a) => super::merge::cmd_merge(a),
        Command::Export(a) => super::export::cmd_export(a),
        Command::Quantize(a) => super::quantize::cmd_quantize(a),
    }
}

/// Select the backend and say which one was taken.
pub fn pick_backend(choice: BackendChoice) -> Result<SelectedBackend> {
    let b = select(choice).map_err(anyhow::Error::msg)?;
    eprintln!("backend: {}", b.description);
    Ok(b)
}

/// Load the model at `path` onto `device`.
pub fn load(
    path: &Path,
    device: &burn::tensor::Device,
    quantize: Option<&str>,
) -> Result<LoadedModel> {
    let mut dir: Option<DirSource> = None;
    let src = model_source(path, &mut dir)?;
    Ok(load_model(src, device, quantize)?)
}

/// Read a model's files (HF folder or .gguf) into host memory without uploading them.
pub fn read_model_files(path: &Path) -> Result<crate::model::loader::ModelFiles> {
    let mut dir: Option<DirSource> = None;
    let src = model_source(path, &mut dir)?;
    Ok(crate::model::loader::read_model(src)?)
}

fn cmd_generate(a: GenerateArgs) -> Result<()> {
    let backend = pick_backend(a.model.backend)?;
    let mut lm = load(&a.model.model, &backend.device, a.model.quantize.as_deref())?;
    if let Some(dir) = &a.adapter {
        crate::io::peft::load_adapter(&DirSource::new(dir), &mut lm.model)?;
    }
    let tok = lm
        .tokenizer
        .as_ref()
        .context("the model has no tokenizer (tokenizer.json or GGUF vocabulary)")?;
    let text = if a.chat {
        let tmpl = lm
            .chat_template
            .as_ref()
            .context("--chat: the model has no chat template")?;
        tmpl.render(
            &[ChatMessage {
                role: "user".into(),
                content: a.prompt.clone(),
            }],
            true,
        )?
    } else {
        a.prompt.clone()
    };
    let prompt = tok
        .encode(text.as_str(), !a.chat)
        .map_err(anyhow::Error::msg)?
        .get_ids()
        .to_vec();
    if prompt.is_empty() {
        bail!("the prompt tokenizes to nothing");
    }
    let cfg = SamplingConfig {
        temperature: a.temperature,
        top_p: a.top_p,
        max_new_tokens: a.max_new_tokens,
        seed: a.seed,
    };
    if a.chat {
        println!("{}", a.prompt)
    } else {
        print!("{}", a.prompt)
    }
    let mut shown = String::new();
    let mut all = Vec::new();
    let mut show = |text: String| {
        print!("{}", new_text(&shown, &text));
        let _ = std::io::stdout().flush();
        shown = text;
    };
    let out = pollster::block_on(generate(&lm.model, &prompt, &cfg, |t| {
        all.push(t);
        // A byte-fallback character split over tokens decodes as U+FFFD until its last byte.
        if let Ok(s) = tok.decode(&all, true)
            && !s.ends_with(char::REPLACEMENT_CHARACTER)
        {
            show(s);
        }
    }))?;
    if let Ok(s) = tok.decode(&all, true) {
        show(s);
    }
    println!();
    eprintln!(
        "{} new tokens, prompt {} tokens in {:.2}s, generation {:.2} tokens/s{}",
        out.tokens.len(),
        prompt.len(),
        out.prefill_secs,
        out.tokens_per_sec(),
        if out.stopped_on_eos {
            " (stopped on EOS)"
        } else {
            ""
        }
    );
    Ok(())
}

/// Read a data file and tokenize it for `lm` (every problem names the file and line).
pub fn read_examples(
    path: &Path,
    lm: &LoadedModel,
    opts: &DataOptions,
) -> Result<(Vec<Example>, LoadReport)> {
    let blob = read_blob(path)?;
    let file = path.display().to_string();
    let (text, skipped) = decode_text((*blob).as_ref(), &file, opts.on_bad_line)?;
    let opts = &DataOptions {
        vocab_size: Some(lm.model.config.vocab_size),
        ..*opts
    };
    let tok = lm.tokenizer.as_ref().map(|t| Tokenize {
        tokenizer: t,
        chat_template: lm.chat_template.as_ref(),
    });
    let (examples, mut report) = load_examples_with(&text, &file, tok.as_ref(), opts)?;
    report.skipped.splice(0..0, skipped);
    Ok((examples, report))
}

fn cmd_eval(a: EvalArgs) -> Result<()> {
    if a.grads && (a.adapter.is_none() || a.dump.is_none()) {
        bail!(
            "--grads needs --adapter (the tensors to differentiate) and --dump (where to write them)"
        );
    }
    let backend = pick_backend(a.model.backend)?;
    let device = if a.grads {
        backend.device.clone().autodiff()
    } else {
        backend.device.clone()
    };
    let mut lm = load(&a.model.model, &device, a.model.quantize.as_deref())?;
    if let Some(dir) = &a.adapter {
        crate::io::peft::load_adapter(&DirSource::new(dir), &mut lm.model)?;
        let n = crate::adapters::named_parameters(&lm.model).len();
        eprintln!("adapter: {} ({n} tensors)", dir.display());
        if a.grads {
            crate::adapters::track_gradients(&mut lm.model);
        }
    }
    let whole = DataOptions {
        max_seq_len: usize::MAX,
        on_bad_line: BadLine::Stop,
        vocab_size: None,
    };
    let (mut examples, _) = read_examples(&a.data, &lm, &whole)?;
    if let Some(n) = a.limit {
        examples.truncate(n);
    }
    if let Some(dump) = &a.dump {
        let t = examples[0].input_ids.len();
        if let Some((i, e)) = examples
            .iter()
            .enumerate()
            .find(|(_, e)| e.input_ids.len() != t)
        {
            bail!(
                "{}: --dump evaluates the file as one batch and needs equal lengths: record 1 has {t} tokens, record {} has {}",
                a.data.display(),
                i + 1,
                e.input_ids.len()
            );
        }
        let ids: Vec<Vec<u32>> = examples.iter().map(|e| e.input_ids.clone()).collect();
        let labels: Vec<Vec<i64>> = examples.iter().map(|e| e.labels.clone()).collect();
        let logits = lm.model.forward(&ids, None)?;
        let dims = logits.dims();
        let (loss, count) = causal_lm_loss(logits.clone(), &labels)?;
        let mut out = BTreeMap::new();
        if a.grads {
            let grads = loss.backward();
            for (key, t) in crate::adapters::named_parameters(&lm.model) {
                let g = t
                    .grad(&grads)
                    .with_context(|| format!("no gradient reached {key}"))?;
                out.insert(
                    format!("grad/{key}"),
                    (g.dims().to_vec(), pollster::block_on(read_f32(g))?),
                );
            }
        }
        let loss_v = pollster::block_on(read_f32(loss.detach()))?;
        let logits_v = pollster::block_on(read_f32(logits.detach()))?;
        out.insert("logits".to_string(), (dims.to_vec(), logits_v));
        out.insert("loss".to_string(), (vec![1], loss_v.clone()));
        let bytes = crate::io::safetensors::serialize_f32(&out, None)?;
        write_atomic(dump, &bytes)?;
        println!(
            "loss {:.6}  perplexity {:.4}  ({count} tokens, dumped to {})",
            loss_v[0],
            loss_v[0].exp(),
            dump.display()
        );
        return Ok(());
    }
    let (mut total, mut tokens) = (0.0f64, 0usize);
    let model = lm.model.without_autodiff();
    for e in &examples {
        // The chunked loss: the same value without a `[T, V]` block of logits.
        let (loss, count) = match model.chunked_loss(
            std::slice::from_ref(&e.input_ids),
            std::slice::from_ref(&e.labels),
        ) {
            Ok(x) => x,
            Err(crate::model::ModelError::NoLabels) => continue,
            Err(err) => return Err(err.into()),
        };
        total += pollster::block_on(read_f32(loss))?[0] as f64 * count as f64;
        tokens += count;
    }
    if tokens == 0 {
        bail!("{}: no scored tokens in the data", a.data.display());
    }
    let mean = total / tokens as f64;
    println!(
        "loss {mean:.6}  perplexity {:.4}  ({} records, {tokens} scored tokens)",
        mean.exp(),
        examples.len()
    );
    Ok(())
}

fn cmd_inspect(a: InspectArgs) -> Result<()> {
    let mut dir: Option<DirSource> = None;
    let info = crate::model::loader::read_model_info(model_source(&a.model, &mut dir)?)?;
    let c = &info.config;
    println!("model        {}", a.model.display());
    println!("format       {}", info.format);
    println!("architecture {}", c.arch.name());
    println!("features     {}", c.features().join(", "));
    println!(
        "shape        {} layers, hidden {}, intermediate {}, heads {} (kv {}), head_dim {}, vocab {}",
        c.num_hidden_layers,
        c.hidden_size,
        c.intermediate_size,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim,
        c.vocab_size
    );
    println!(
        "rope         theta {}{}, max positions {}, tied embeddings {}",
        c.rope_theta,
        if c.rope_scaling.is_some() {
            " (llama3 scaling)"
        } else {
            ""
        },
        c.max_position_embeddings,
        c.tie_word_embeddings
    );
    let params = c.num_parameters();
    println!("parameters   {params} ({:.1} M)", params as f64 / 1e6);
    let groups = info.groups();
    println!("tensors      count type        params     as stored            on a GPU device");
    for g in &groups {
        let packed = match g.packed_bpw() {
            Some(bpw) if g.packed_count == g.count => format!("{bpw:.2} bpw packed"),
            Some(bpw) => format!(
                "{bpw:.2} bpw packed ({} of {}; the rest f32)",
                g.packed_count, g.count
            ),
            None => "f32".to_string(),
        };
        println!(
            "             {:5} x {:<5} {:>7.1} M  {:>8.1} MiB {:>5.2} bpw  {:>8.1} MiB  {packed}",
            g.count,
            g.ty,
            g.numel as f64 / 1e6,
            g.bytes as f64 / 1048576.0,
            g.stored_bpw(),
            g.gpu_bytes as f64 / 1048576.0,
        );
    }
    let mib = |f: fn(&crate::model::weights::TensorGroup) -> usize| {
        groups.iter().map(f).sum::<usize>() as f64 / 1048576.0
    };
    println!(
        "memory       {:.1} MiB as stored, {:.1} MiB on a GPU device (linears packed), {:.1} MiB as f32 (CPU backend)",
        mib(|g| g.bytes),
        mib(|g| g.gpu_bytes),
        mib(|g| g.numel * 4)
    );
    println!(
        "tokenizer    {}",
        if info.has_tokenizer { "yes" } else { "none" }
    );
    println!(
        "chat         {}",
        if info.has_chat_template {
            "template present"
        } else {
            "no template"
        }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::new_text;

    /// Streaming decode: a plain extension prints the tail; a replacement character that a later
    /// byte turns into a real one prints from the change on, never panicking inside a character.
    #[test]
    fn new_text_after_a_changed_tail() {
        assert_eq!(new_text("ab", "abc"), "c");
        assert_eq!(new_text("", "é"), "é");
        assert_eq!(new_text("ccz\u{FFFD}", "ccz😀!"), "😀!");
        assert_eq!(new_text("x\u{FFFD}\u{FFFD}", "x"), "");
    }
}
