//! The browser app's in-memory training session (`train::session::Session`: model and data
//! already in memory, no files) trains exactly like `wgtune train` on the same run file: same
//! eval split, batch order over several shuffled epochs, gradient accumulation and dropout, so the
//! same losses, eval losses and adapter.

use crate::common::*;
use wgtune::app::train::{TrainControl, run_training};
use wgtune::train::run::RunConfig;
use wgtune::train::session::Session;

#[test]
fn in_memory_session_matches_run_training() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data.jsonl");
    // Twelve random rows of token ids, 6 to 10 long.
    std::fs::write(&data, token_id_rows(777, (0..12).map(|i| 6 + i % 5))).unwrap();
    let out = tmp.path().join("out");
    for method in ["lora", "oft"] {
        let run = RunConfig {
            model: Some(fixture("tiny_gqa").display().to_string()),
            data: Some(data.display().to_string()),
            out: Some(out.display().to_string()),
            backend: Some("cpu".into()),
            method: Some(method.into()),
            r: Some(4),
            lora_alpha: Some(8.0),
            lora_dropout: Some(0.1),
            oft_block_size: Some(16),
            lr: Some(0.01),
            epochs: Some(3),
            batch_size: Some(2),
            grad_accum: Some(2),
            eval_split: Some(0.2),
            eval_every: Some(2),
            seed: Some(5),
            ..Default::default()
        };
        let mut native = Vec::new();
        run_training(&run, &TrainControl::default(), &mut |e| {
            if let wgtune::app::train::TrainEvent::Metrics(v) = e {
                native.push((v["loss"].as_f64(), v["eval_loss"].as_f64()));
            }
        })
        .unwrap();
        let native_adapter = std::fs::read(out.join("adapter_model.safetensors")).unwrap();

        let device = burn::tensor::Device::flex().autodiff();
        let dir = wgtune::app::files::DirSource::new(fixture("tiny_gqa"));
        let lm = wgtune::load_model(
            wgtune::model::loader::ModelSource::HfFolder(&dir),
            &device,
            None,
        )
        .unwrap();
        let text = std::fs::read_to_string(&data).unwrap();
        let (mut session, _) = Session::new(&run, lm, &text, &data.display().to_string()).unwrap();
        let mut web = vec![(None, pollster::block_on(session.eval_before()).unwrap())];
        while !session.done() {
            let (m, eval) = pollster::block_on(session.step()).unwrap();
            web.push((Some(m.loss), eval));
        }
        assert_eq!(session.schedule.total, 7);
        assert_eq!(native.len(), 1 + 7);
        assert_eq!(web, native, "{method}: losses differ");
        let (_, bytes) =
            pollster::block_on(session.adapter_files(&fixture("tiny_gqa").display().to_string()))
                .unwrap();
        assert_eq!(bytes, native_adapter, "{method}: adapters differ");
    }
}
