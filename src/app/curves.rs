//! Live training curves: `metrics.jsonl` lines (from the training loop's events, or tailed from a
//! LoRA-PAR run's file) turned into plot series, with the smoothed loss and LoRA-PAR's stages.

use serde_json::Value;

/// One plot series: `[x, y]` points.
pub type Series = Vec<[f64; 2]>;

/// Every curve the app plots.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Curves {
    /// Train loss per step.
    pub loss: Series,
    /// Exponential moving average of the train loss (debiased, TensorBoard-style).
    pub smooth: Series,
    /// Eval loss (step 0 = before training).
    pub eval: Series,
    /// Learning rate.
    pub lr: Series,
    /// Global gradient norm before clipping.
    pub grad_norm: Series,
    /// Tokens per second.
    pub tokens_per_s: Series,
    /// Device memory in use, MiB.
    pub mem_mib: Series,
    /// LoRA-PAR GRPO: mean reward per step.
    pub reward: Series,
    /// LoRA-PAR: System-2 accuracy (before/after stage 2).
    pub accuracy: Series,
    /// x of LoRA-PAR's stage boundaries (SFT → GRPO).
    pub stages: Vec<f64>,
    /// EMA weight in [0, 1).
    pub smoothing: f64,
    ema: f64,
    ema_n: i32,
    last_x: f64,
    sft_end: f64,
    in_rl: bool,
}

impl Curves {
    /// Empty curves smoothing the loss with EMA weight `smoothing`.
    pub fn new(smoothing: f64) -> Curves {
        Curves {
            smoothing: smoothing.clamp(0.0, 0.999),
            ..Default::default()
        }
    }

    /// Curves of a whole `metrics.jsonl` text (unreadable lines are skipped).
    pub fn from_jsonl(text: &str, smoothing: f64) -> Curves {
        let mut c = Curves::new(smoothing);
        for line in text.lines() {
            if let Ok(v) = serde_json::from_str::<Value>(line) {
                c.push(&v);
            }
        }
        c
    }

    /// Recompute the smoothed loss with a new EMA weight.
    pub fn set_smoothing(&mut self, smoothing: f64) {
        let s = smoothing.clamp(0.0, 0.999);
        if s == self.smoothing {
            return;
        }
        self.smoothing = s;
        self.smooth.clear();
        self.ema = 0.0;
        self.ema_n = 0;
        let loss = std::mem::take(&mut self.loss);
        for [x, y] in &loss {
            self.push_smooth(*x, *y);
        }
        self.loss = loss;
    }

    fn push_smooth(&mut self, x: f64, y: f64) {
        let w = self.smoothing;
        self.ema = w * self.ema + (1.0 - w) * y;
        self.ema_n += 1;
        let debias = 1.0 - w.powi(self.ema_n);
        self.smooth
            .push([x, if debias > 0.0 { self.ema / debias } else { y }]);
    }

    /// Add one metrics line.
    pub fn push(&mut self, v: &Value) {
        let f = |k: &str| v.get(k).and_then(Value::as_f64).filter(|x| x.is_finite());
        let stage = v.get("stage").and_then(Value::as_str);
        if stage == Some("rl") && !self.in_rl {
            self.in_rl = true;
            self.sft_end = self.last_x;
            self.stages.push(self.sft_end);
        }
        let x = match (f("step"), stage) {
            (Some(s), Some("rl")) => self.sft_end + s,
            (Some(s), _) => s,
            (None, _) => self.last_x,
        };
        self.last_x = x;
        if let Some(y) = f("loss") {
            self.loss.push([x, y]);
            self.push_smooth(x, y);
        }
        for (key, series) in [
            ("eval_loss", &mut self.eval),
            ("lr", &mut self.lr),
            ("grad_norm", &mut self.grad_norm),
            ("tokens_per_s", &mut self.tokens_per_s),
            ("reward_mean", &mut self.reward),
            ("rl_accuracy", &mut self.accuracy),
        ] {
            if let Some(y) = f(key) {
                series.push([x, y]);
            }
        }
        if let Some(m) = f("mem") {
            self.mem_mib.push([x, m / 1048576.0]);
        }
    }

    /// Steps seen so far (the last x).
    pub fn last_step(&self) -> f64 {
        self.last_x
    }
}

/// `series` with y replaced by log10(y) (non-positive values dropped), for the log-scale toggle.
pub fn log10(series: &Series) -> Series {
    series
        .iter()
        .filter(|p| p[1] > 0.0)
        .map(|p| [p[0], p[1].log10()])
        .collect()
}

/// The series divided by a power of ten so its largest magnitude lies in [1, 10), and that
/// exponent: tiny values such as a learning rate of 2e-4 otherwise plot as a flat line at 0
/// (the plot's axis ticks do not go below 1e-3 or so).
pub fn scaled(series: &Series) -> (Series, i32) {
    let max = series.iter().fold(0.0f64, |m, p| m.max(p[1].abs()));
    if max == 0.0 || !max.is_finite() {
        return (series.clone(), 0);
    }
    let e = max.log10().floor() as i32;
    let f = 10f64.powi(-e);
    (series.iter().map(|p| [p[0], p[1] * f]).collect(), e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaled_brings_small_values_to_unit_range() {
        let (s, e) = scaled(&vec![[1.0, 2e-4], [2.0, 1e-4], [3.0, 0.0]]);
        assert_eq!(e, -4);
        assert!((s[0][1] - 2.0).abs() < 1e-12 && (s[1][1] - 1.0).abs() < 1e-12);
        assert_eq!(s[2], [3.0, 0.0]);
        assert_eq!(scaled(&vec![[0.0, 0.0]]).1, 0);
        assert_eq!(scaled(&vec![[0.0, 350.0]]).1, 2);
    }

    #[test]
    fn lines_become_series_and_the_ema_is_debiased() {
        let text = "{\"step\":0,\"eval_loss\":3.0}\n\
                    {\"step\":1,\"loss\":2.0,\"lr\":0.1,\"grad_norm\":1.0,\"tokens_per_s\":10,\"mem\":1048576}\n\
                    not json\n\
                    {\"step\":2,\"loss\":4.0,\"lr\":0.1,\"grad_norm\":1.0,\"tokens_per_s\":10,\"mem\":2097152,\"eval_loss\":2.5}\n";
        let c = Curves::from_jsonl(text, 0.5);
        assert_eq!(c.loss, vec![[1.0, 2.0], [2.0, 4.0]]);
        assert_eq!(c.eval, vec![[0.0, 3.0], [2.0, 2.5]]);
        assert_eq!(c.mem_mib, vec![[1.0, 1.0], [2.0, 2.0]]);
        // First smoothed point equals the raw one; then (0.5·2·0.5 + 0.5·4) / 0.75.
        assert_eq!(c.smooth[0], [1.0, 2.0]);
        assert!((c.smooth[1][1] - (0.5 * 0.5 * 2.0 + 0.5 * 4.0) / 0.75).abs() < 1e-12);
        let mut raw = c.clone();
        raw.set_smoothing(0.0);
        assert_eq!(raw.smooth, raw.loss);
        assert_eq!(log10(&vec![[1.0, 100.0], [2.0, 0.0]]), vec![[1.0, 2.0]]);
    }

    #[test]
    fn par_stages_are_laid_end_to_end() {
        let text = "{\"stage\":\"sft\",\"step\":1,\"loss\":1.0}\n{\"stage\":\"sft\",\"step\":2,\"loss\":0.9}\n\
                    {\"eval\":\"before stage 2\",\"rl_accuracy\":0.25}\n\
                    {\"stage\":\"rl\",\"step\":1,\"reward_mean\":0.5}\n";
        let c = Curves::from_jsonl(text, 0.9);
        assert_eq!(c.stages, vec![2.0]);
        assert_eq!(c.reward, vec![[3.0, 0.5]]);
        assert_eq!(c.accuracy, vec![[2.0, 0.25]]);
    }
}
