//! `cargo bench`: the training-step benchmark of `wgtune bench --methods` over the same harness.
//! Without arguments: all five methods on the default shape (vocab 32000, hidden 512,
//! intermediate 1376, 8 layers, 8 heads, batch 4 x seq 256), JSON to target/bench/wgtune.json.
//! Arguments after `--` are `wgtune bench` flags: `cargo bench -- --backend wgpu --layers 2`.

use clap::Parser;
use wgtune::app::cli::{Cli, run};

fn main() -> anyhow::Result<()> {
    // cargo passes `--bench`; everything else is ours.
    let mut args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if !args.iter().any(|a| a == "--methods" || a == "--kernels") {
        args.extend(["--methods".into(), "lora,oft,oft-v1,qlora,qoft".into()]);
    }
    if !args.iter().any(|a| a == "--json") {
        std::fs::create_dir_all("target/bench")?;
        args.extend(["--json".into(), "target/bench/wgtune.json".into()]);
    }
    let argv = ["wgtune".to_string(), "bench".to_string()]
        .into_iter()
        .chain(args);
    run(Cli::parse_from(argv))
}
