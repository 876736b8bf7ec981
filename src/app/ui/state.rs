//! The apps' state without a window: the persisted settings (the run as TOML plus recent
//! files and view options), the method choices, what a loaded model says about itself, trainable
//! parameter counts, memory estimates and every validation message. Unit-tested headless.

use crate::adapters::{AdapterConfig, Method};
use crate::io::chat::ChatTemplate;
use crate::model::config::DecoderConfig;
use crate::train::data::{BadLine, DataOptions, Tokenize, load_examples_with, parse_records};
use crate::train::run::RunConfig;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// How many entries each recent-files list keeps.
pub const RECENT_MAX: usize = 8;

/// What the app remembers between launches (eframe storage, RON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// The run, as the TOML `wgtune train --config` reads (robust to fields added later).
    pub run_toml: String,
    /// Recently used model paths, newest first.
    pub recent_models: Vec<String>,
    /// Recently used data files, newest first.
    pub recent_data: Vec<String>,
    /// Recently opened or saved run files, newest first.
    pub recent_runs: Vec<String>,
    /// Path in the "run file" field.
    pub run_file: String,
    /// Log-scale y axis on the loss plot.
    pub log_scale: bool,
    /// EMA weight of the smoothed loss (0 = raw, 0.99 = very smooth).
    pub smoothing: f64,
    /// Last prompt of the sample-generation box.
    pub prompt: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            run_toml: String::new(),
            recent_models: Vec::new(),
            recent_data: Vec::new(),
            recent_runs: Vec::new(),
            run_file: "run.toml".into(),
            log_scale: false,
            smoothing: 0.9,
            prompt: "Once upon a time".into(),
        }
    }
}

impl Settings {
    /// The run these settings hold (an unreadable stored run falls back to the defaults).
    pub fn run(&self) -> RunConfig {
        RunConfig::from_toml(&self.run_toml).unwrap_or_default()
    }
}

/// Put `path` first in a recent list (no duplicates, at most [`RECENT_MAX`]).
pub fn remember(list: &mut Vec<String>, path: &str) {
    let path = path.trim();
    if path.is_empty() {
        return;
    }
    list.retain(|p| p != path);
    list.insert(0, path.to_string());
    list.truncate(RECENT_MAX);
}

/// The methods the method panel offers, each a `method` (+ `init`) of the run file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodChoice {
    /// LoRA on the dense base.
    Lora,
    /// LoRA over an NF4-quantized base.
    Qlora,
    /// QLoRA with LoftQ initialisation (`init = "loftq"`).
    Loftq,
    /// OFTv2 (input-centric orthogonal finetuning).
    Oft,
    /// OFTv2 over an NF4-quantized base.
    Qoft,
    /// LoRA-PAR: SFT then GRPO over partitioned LoRA elements.
    LoraPar,
    /// LoRA-PAR over an NF4 base.
    QloraPar,
}

impl MethodChoice {
    /// Every choice, in the order the panel lists them.
    pub const ALL: [MethodChoice; 7] = [
        MethodChoice::Lora,
        MethodChoice::Qlora,
        MethodChoice::Loftq,
        MethodChoice::Oft,
        MethodChoice::Qoft,
        MethodChoice::LoraPar,
        MethodChoice::QloraPar,
    ];

    /// The label shown in the UI.
    pub fn label(self) -> &'static str {
        match self {
            MethodChoice::Lora => "LoRA",
            MethodChoice::Qlora => "QLoRA",
            MethodChoice::Loftq => "QLoRA + LoftQ init",
            MethodChoice::Oft => "OFTv2",
            MethodChoice::Qoft => "QOFT",
            MethodChoice::LoraPar => "LoRA-PAR",
            MethodChoice::QloraPar => "QLoRA-PAR",
        }
    }

    /// One line on what the method does (tooltip).
    pub fn help(self) -> &'static str {
        match self {
            MethodChoice::Lora => {
                "Low-rank update B·A added to each target projection (Hu et al. 2021; peft defaults r 8, alpha 16)."
            }
            MethodChoice::Qlora => {
                "LoRA over a base quantized to NF4 on load; the base stays packed on the GPU (Dettmers et al. 2023)."
            }
            MethodChoice::Loftq => {
                "QLoRA whose A, B start as the rank-r SVD of the NF4 quantization residual (Li et al. 2023); writes OUT/base-nf4."
            }
            MethodChoice::Oft => {
                "Block-diagonal orthogonal rotation of each projection's input, Cayley-parametrised (OFTv2, Qiu et al. 2025)."
            }
            MethodChoice::Qoft => "OFTv2 over an NF4-quantized base.",
            MethodChoice::LoraPar => {
                "Two stages over partitioned LoRA elements: SFT on System-1 data, then GRPO on System-2 prompts (LoRA-PAR)."
            }
            MethodChoice::QloraPar => "LoRA-PAR over an NF4-quantized base.",
        }
    }

    /// The choice a run describes.
    pub fn of(run: &RunConfig) -> MethodChoice {
        match (run.method.as_deref().unwrap_or("lora"), run.init.as_deref()) {
            ("qlora" | "lora", Some("loftq")) => MethodChoice::Loftq,
            ("qlora", _) => MethodChoice::Qlora,
            ("oft", _) => MethodChoice::Oft,
            ("qoft", _) => MethodChoice::Qoft,
            ("lora-par", _) => MethodChoice::LoraPar,
            ("qlora-par", _) => MethodChoice::QloraPar,
            _ => MethodChoice::Lora,
        }
    }

    /// Set `run`'s method (and init) to this choice.
    pub fn apply(self, run: &mut RunConfig) {
        let (method, loftq) = match self {
            MethodChoice::Lora => ("lora", false),
            MethodChoice::Qlora => ("qlora", false),
            MethodChoice::Loftq => ("qlora", true),
            MethodChoice::Oft => ("oft", false),
            MethodChoice::Qoft => ("qoft", false),
            MethodChoice::LoraPar => ("lora-par", false),
            MethodChoice::QloraPar => ("qlora-par", false),
        };
        run.method = Some(method.into());
        if loftq {
            run.init = Some("loftq".into());
        } else if run.init.as_deref() == Some("loftq") {
            run.init = None;
            run.loftq_iters = None;
        }
    }

    /// True for the LoRA-PAR variants.
    pub fn is_par(self) -> bool {
        matches!(self, MethodChoice::LoraPar | MethodChoice::QloraPar)
    }

    /// True for the OFT variants.
    pub fn is_oft(self) -> bool {
        matches!(self, MethodChoice::Oft | MethodChoice::Qoft)
    }
}

pub use crate::model::weights::TensorGroup;

/// What the model panel shows about a model, read from its files (no device needed).
#[derive(Clone)]
pub struct ModelInfo {
    /// Path it was read from.
    pub path: String,
    /// Hyper-parameters.
    pub config: DecoderConfig,
    /// `hf-safetensors` or `gguf vN`.
    pub format: String,
    /// Tensors grouped by storage type.
    pub groups: Vec<TensorGroup>,
    /// The tokenizer, when the files carry one (data preview, generation).
    pub tokenizer: Option<Arc<tokenizers::Tokenizer>>,
    /// The chat template, when the files carry one.
    pub chat_template: Option<Arc<ChatTemplate>>,
}

impl ModelInfo {
    /// Summarise model files read by [`crate::app::cli::read_model_files`].
    pub fn from_files(path: &str, files: crate::model::loader::ModelFiles) -> ModelInfo {
        let groups = crate::model::loader::tensor_groups(&files);
        ModelInfo {
            path: path.to_string(),
            config: files.config,
            format: files.format,
            groups,
            tokenizer: files.tokenizer.map(Arc::new),
            chat_template: files.chat_template.map(Arc::new),
        }
    }

    /// Bytes of the weights as stored in the files.
    pub fn stored_bytes(&self) -> usize {
        self.groups.iter().map(|g| g.bytes).sum()
    }

    /// Quantization of the stored weights, e.g. `Q4_1 (182 tensors), F32 (61)`.
    pub fn quantization(&self) -> String {
        self.groups
            .iter()
            .map(|g| format!("{} ({})", g.ty, g.count))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `(name, in_features, out_features)` of each decoder projection of `c`.
pub fn projections(c: &DecoderConfig) -> [(&'static str, usize, usize); 7] {
    let (h, i) = (c.hidden_size, c.intermediate_size);
    let q = c.num_attention_heads * c.head_dim;
    let kv = c.num_key_value_heads * c.head_dim;
    [
        ("q_proj", h, q),
        ("k_proj", h, kv),
        ("v_proj", h, kv),
        ("o_proj", q, h),
        ("gate_proj", h, i),
        ("up_proj", h, i),
        ("down_proj", i, h),
    ]
}

/// Trainable adapter parameters of `a` on a model shaped `c`, or why the adapter does not fit
/// (OFT block sizes are checked per projection with [`crate::adapters::oft::OftConfig::block_size_for`]).
pub fn trainable_params(c: &DecoderConfig, a: &AdapterConfig) -> Result<usize, String> {
    let mut per_layer = 0usize;
    for (name, inf, outf) in projections(c) {
        if !a.target_modules.iter().any(|t| t == name) {
            continue;
        }
        per_layer += match &a.method {
            Method::Lora(l) => l.r * (inf + outf),
            Method::Oft(o) => {
                let b = o.block_size_for(inf).map_err(|e| format!("{name}: {e}"))?;
                let blocks = if o.block_share { 1 } else { inf / b };
                blocks * b * (b - 1) / 2
            }
        };
    }
    Ok(per_layer * c.num_hidden_layers)
}

/// Rough device memory of a run, in bytes: the base (NF4 decoder linears at 4.5 bits when
/// quantized, everything else f32), the adapter with its gradient and AdamW moments, and the
/// activations autodiff keeps for one micro-batch.
pub fn memory_estimate(
    c: &DecoderConfig,
    quantized: bool,
    trainable: usize,
    batch: usize,
    seq: usize,
) -> usize {
    let linear: usize =
        projections(c).iter().map(|(_, i, o)| i * o).sum::<usize>() * c.num_hidden_layers;
    let total = c.num_parameters();
    let base = if quantized {
        linear * 9 / 16 + (total - linear) * 4
    } else {
        total * 4
    };
    let adapter = trainable * 4 * 4;
    let per_token =
        c.num_hidden_layers * (8 * c.hidden_size + 3 * c.intermediate_size) + 2 * c.vocab_size;
    base + adapter + batch * seq * per_token * 4
}

/// Human size (`12.3 MiB`).
pub fn mib(bytes: usize) -> String {
    let m = bytes as f64 / 1048576.0;
    if m >= 1024.0 {
        format!("{:.2} GiB", m / 1024.0)
    } else {
        format!("{m:.1} MiB")
    }
}

/// Every problem with `run` that would stop `wgtune train`, as messages for the UI (empty =
/// ready). With a model loaded, adapter shapes are checked against it too.
pub fn problems(run: &RunConfig, model: Option<&ModelInfo>) -> Vec<String> {
    let mut out = Vec::new();
    for (v, key) in [
        (&run.model, "model"),
        (&run.data, "data"),
        (&run.out, "out"),
    ] {
        if v.as_deref().is_none_or(|s| s.trim().is_empty()) {
            out.push(format!("{key}: not set"));
        }
    }
    match run.adapter() {
        Ok(a) => {
            if let Some(m) = model
                && let Err(e) = trainable_params(&m.config, &a)
            {
                out.push(e);
            }
        }
        Err(e) => out.push(e),
    }
    if let Err(e) = run.loftq_iters() {
        out.push(e);
    }
    if let Err(e) = run.train(1) {
        out.push(e);
    }
    if let Some(b) = run.backend.as_deref()
        && let Err(e) = b.parse::<crate::backend::BackendChoice>()
    {
        out.push(e);
    }
    if let Err(e) = run.validate() {
        out.push(e);
    }
    if run.steps == Some(0) {
        out.push("steps must be at least 1 (or leave it empty to train by epochs)".into());
    }
    if let Some(q) = run.quantize.as_deref()
        && q != "nf4"
    {
        out.push(format!("quantize `{q}`: only nf4 is supported on load"));
    }
    if MethodChoice::of(run).is_par() {
        for (v, key) in [
            (run.par_theta, "par_theta"),
            (run.par_alpha, "par_alpha"),
            (run.par_beta, "par_beta"),
        ] {
            if let Some(x) = v
                && !(0.0..=1.0).contains(&x)
            {
                out.push(format!("{key} {x} must be in [0, 1]"));
            }
        }
        if run.par_voters.is_some_and(|n| n % 2 == 0) {
            out.push("par_voters must be odd (majority vote)".into());
        }
    }
    out
}

/// Trainable-parameter line for the method panel.
pub fn trainable_line(run: &RunConfig, model: Option<&ModelInfo>) -> String {
    let Some(m) = model else {
        return "trainable parameters: load a model to count them".into();
    };
    match run.adapter().and_then(|a| trainable_params(&m.config, &a)) {
        Ok(n) => format!(
            "trainable parameters: {n} ({:.3}% of {})",
            100.0 * n as f64 / m.config.num_parameters().max(1) as f64,
            m.config.num_parameters()
        ),
        Err(e) => format!("trainable parameters: — ({e})"),
    }
}

/// Set an optional field from a text box: empty clears it, a parse error is returned as text.
pub fn parse_opt<T: std::str::FromStr>(text: &str) -> Result<Option<T>, String> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(None);
    }
    t.parse::<T>()
        .map(Some)
        .map_err(|_| format!("`{t}` is not a valid number"))
}

/// What the data panel shows about a data file.
#[derive(Debug, Clone, Default)]
pub struct DataInfo {
    /// Records per detected format, e.g. `alpaca: 999`.
    pub formats: Vec<(String, usize)>,
    /// Records read.
    pub records: usize,
    /// The first examples as the model will see them (template applied, scored part in [[ ]]).
    pub preview: Vec<String>,
    /// Token length of every usable example (before truncation).
    pub lengths: Vec<usize>,
    /// Records that cannot be used, with why (first few).
    pub problems: Vec<String>,
}

/// The record format a JSON record is read as (see `train::data`).
pub fn detect_format(v: &serde_json::Value) -> &'static str {
    let has = |k: &str| v.get(k).is_some();
    if has("input_ids") {
        "token ids"
    } else if has("messages") {
        "chat messages"
    } else if has("instruction") {
        "alpaca"
    } else if has("prompt") && has("completion") {
        "prompt/completion"
    } else if has("text") {
        "text"
    } else {
        "unknown"
    }
}

/// Summarise a data file's `text` (named `path` in messages) for the data panel: formats, token
/// lengths, problems and the first examples (the model's tokenizer and chat template, when a model
/// is loaded, render text records exactly as training will).
pub fn summarize_data(
    text: &str,
    path: &str,
    model: Option<&ModelInfo>,
) -> Result<DataInfo, String> {
    let records = parse_records(text, path).map_err(|e| e.to_string())?;
    let mut info = DataInfo {
        records: records.len(),
        ..Default::default()
    };
    for (_, v) in &records {
        let f = detect_format(v);
        match info.formats.iter_mut().find(|(n, _)| n == f) {
            Some((_, c)) => *c += 1,
            None => info.formats.push((f.to_string(), 1)),
        }
    }
    let tok = model.and_then(|m| {
        m.tokenizer.as_deref().map(|t| Tokenize {
            tokenizer: t,
            chat_template: m.chat_template.as_deref(),
        })
    });
    let opts = DataOptions {
        max_seq_len: usize::MAX,
        on_bad_line: BadLine::Skip,
        vocab_size: model.map(|m| m.config.vocab_size),
    };
    let (examples, report) =
        load_examples_with(text, path, tok.as_ref(), &opts).map_err(|e| e.to_string())?;
    info.problems = report
        .skipped
        .iter()
        .take(5)
        .map(|(line, msg)| format!("line {line}: {msg}"))
        .collect();
    if tok.is_none() && !report.skipped.is_empty() {
        info.problems.insert(
            0,
            "text records need a model with a tokenizer: load the model first".into(),
        );
    }
    info.lengths = examples.iter().map(|e| e.input_ids.len()).collect();
    for e in examples.iter().take(3) {
        let first_scored = e
            .labels
            .iter()
            .position(|&l| l != -100)
            .unwrap_or(e.labels.len());
        let (prompt, scored) = e.input_ids.split_at(first_scored);
        info.preview.push(match &tok {
            Some(t) => {
                let dec = |ids: &[u32]| t.tokenizer.decode(ids, false).unwrap_or_default();
                format!("{}[[{}]]", dec(prompt), dec(scored))
            }
            None => format!("ids {prompt:?} [[{scored:?}]]"),
        });
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> ModelInfo {
        let files = crate::app::cli::read_model_files(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/tiny_gqa"
        )))
        .unwrap();
        ModelInfo::from_files("tiny_gqa", files)
    }

    #[test]
    fn parameter_counts_match_the_attached_adapters() {
        let info = tiny();
        let device = burn::tensor::Device::flex();
        for toml in [
            "method = \"lora\"\nr = 4\n",
            "method = \"lora\"\nr = 2\ntarget_modules = \"q_proj,down_proj\"\n",
            "method = \"oft\"\noft_block_size = 8\n",
            "method = \"oft\"\noft_block_size = 8\nblock_share = true\n",
        ] {
            let run = RunConfig::from_toml(toml).unwrap();
            let a = run.adapter().unwrap();
            let mut lm = crate::app::cli::load(
                std::path::Path::new(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/fixtures/tiny_gqa"
                )),
                &device,
                None,
            )
            .unwrap();
            crate::adapters::attach(&mut lm.model, &a, 1).unwrap();
            let real: usize = crate::adapters::named_parameters(&lm.model)
                .iter()
                .map(|(_, t)| t.dims().iter().product::<usize>())
                .sum();
            assert_eq!(trainable_params(&info.config, &a), Ok(real), "{toml}");
            assert!(trainable_line(&run, Some(&info)).contains(&real.to_string()));
        }
    }

    #[test]
    fn invalid_combinations_are_explained() {
        let info = tiny();
        let ok = RunConfig::from_toml(
            "model = \"m\"\ndata = \"d\"\nout = \"o\"\nmethod = \"oft\"\noft_block_size = 8\n",
        )
        .unwrap();
        assert_eq!(problems(&ok, Some(&info)), Vec::<String>::new());
        let mut bad = ok.clone();
        bad.oft_block_size = Some(7);
        let p = problems(&bad, Some(&info));
        assert!(
            p.iter().any(|m| m.contains("block size 7 does not divide")),
            "{p:?}"
        );
        assert!(trainable_line(&bad, Some(&info)).contains("does not divide"));
        // Without a model only the settings themselves are checked.
        assert!(problems(&bad, None).is_empty());
        let mut loftq = ok.clone();
        MethodChoice::Oft.apply(&mut loftq);
        loftq.init = Some("loftq".into());
        assert!(problems(&loftq, None).iter().any(|m| m.contains("loftq")));
        let mut lr = ok.clone();
        lr.lr = Some(-1.0);
        lr.model = None;
        let p = problems(&lr, None);
        assert!(p.iter().any(|m| m.contains("lr -1")), "{p:?}");
        assert!(p.iter().any(|m| m == "model: not set"), "{p:?}");
        let mut r0 = ok.clone();
        MethodChoice::Lora.apply(&mut r0);
        r0.r = Some(0);
        assert!(!problems(&r0, None).is_empty());
        let mut par = ok;
        MethodChoice::LoraPar.apply(&mut par);
        par.par_theta = Some(1.5);
        par.par_voters = Some(2);
        let p = problems(&par, None);
        assert!(p.iter().any(|m| m.contains("par_theta")) && p.iter().any(|m| m.contains("odd")));
    }

    #[test]
    fn method_choices_round_trip_through_the_run() {
        for c in MethodChoice::ALL {
            let mut run = RunConfig::default();
            c.apply(&mut run);
            assert_eq!(MethodChoice::of(&run), c);
            let back = RunConfig::from_toml(&run.to_toml()).unwrap();
            assert_eq!(MethodChoice::of(&back), c);
        }
        let mut run = RunConfig::default();
        MethodChoice::Loftq.apply(&mut run);
        run.loftq_iters = Some(2);
        MethodChoice::Qlora.apply(&mut run);
        assert_eq!((run.init, run.loftq_iters), (None, None));
    }

    #[test]
    fn settings_and_run_file_round_trip() {
        let mut s = Settings::default();
        let mut run = RunConfig::from_toml("model = \"m\"\nlr = 0.001\nsteps = 3\n").unwrap();
        MethodChoice::Qoft.apply(&mut run);
        s.run_toml = run.to_toml();
        remember(&mut s.recent_models, "a");
        remember(&mut s.recent_models, "b");
        remember(&mut s.recent_models, "a");
        assert_eq!(s.recent_models, ["a", "b"]);
        for i in 0..20 {
            remember(&mut s.recent_data, &i.to_string());
        }
        assert_eq!(s.recent_data.len(), RECENT_MAX);
        let ron = serde_json::to_string(&s).unwrap();
        let back: Settings = serde_json::from_str(&ron).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.run(), run);
        // Older stored settings (missing keys) and a broken stored run fall back to defaults.
        let old: Settings = serde_json::from_str("{\"log_scale\": true}").unwrap();
        assert!(old.log_scale && old.run() == RunConfig::default());
        assert_eq!(parse_opt::<f64>(" 2e-4 "), Ok(Some(2e-4)));
        assert_eq!(parse_opt::<usize>(""), Ok(None));
        assert!(parse_opt::<usize>("x").unwrap_err().contains("`x`"));
    }

    #[test]
    fn memory_estimate_grows_with_batch_and_shrinks_when_quantized() {
        let c = tiny().config;
        let a = memory_estimate(&c, false, 1000, 1, 64);
        assert!(memory_estimate(&c, false, 1000, 4, 64) > a);
        assert!(memory_estimate(&c, true, 1000, 1, 64) < a);
        assert!(mib(3 * 1048576).starts_with("3.0 MiB"));
    }

    #[test]
    fn data_summary_counts_formats_lengths_and_problems() {
        let text = concat!(
            "{\"input_ids\": [1, 2, 3, 4], \"labels\": [-100, -100, 3, 4]}\n",
            "{\"input_ids\": [5, 6]}\n",
            "{\"text\": \"needs a tokenizer\"}\n",
        );
        let d = summarize_data(text, "mem.jsonl", Some(&tiny())).unwrap();
        assert_eq!(d.records, 3);
        assert_eq!(
            d.formats,
            vec![("token ids".to_string(), 2), ("text".to_string(), 1)]
        );
        assert_eq!(d.lengths, vec![4, 2]);
        assert_eq!(d.preview[0], "ids [1, 2] [[[3, 4]]]");
        // The tiny model has no tokenizer: the text record is reported, with what to do.
        assert!(d.problems[0].contains("tokenizer"), "{:?}", d.problems);
        assert!(d.problems.iter().any(|p| p.starts_with("line 3:")));
        let bad = summarize_data("{\"input_ids\": [1]}\nnot json\n", "bad.jsonl", None);
        assert!(bad.unwrap_err().contains("bad.jsonl"));
    }
}
