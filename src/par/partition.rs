//! Partition of the LoRA elements from the two systems' importance: per system the smallest top
//! set whose cumulative importance reaches `theta` of the total (sorted by importance, ties by
//! element index; the total is the sum in that order). Elements in both sets are shared, the
//! rest System-1 only, System-2 only or unused. Also the per-stage active sets and the report.

use super::System;
use super::importance::Importance;
use crate::adapters::mask::{ElementMasks, S1_ONLY, S2_ONLY, SHARED, UNUSED};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// Element indices sorted by descending value, ties by ascending index.
fn ranked(values: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    order
}

/// The smallest top set of `values` whose cumulative sum reaches `theta` of the total, as flags.
/// All-zero values give the empty set.
pub fn top_set(values: &[f64], theta: f64) -> Vec<bool> {
    let order = ranked(values);
    let total: f64 = order.iter().map(|&i| values[i]).sum();
    let mut keep = vec![false; values.len()];
    if total <= 0.0 {
        return keep;
    }
    let target = theta * total;
    let mut cum = 0.0;
    for &i in &order {
        keep[i] = true;
        cum += values[i];
        if cum >= target {
            break;
        }
    }
    keep
}

/// Element codes (0 unused, 1 S1-only, 2 S2-only, 3 shared) from the two importance vectors.
pub fn partition(s1: &Importance, s2: &Importance, theta: f64) -> ElementMasks {
    let k1 = top_set(&s1.flat(), theta);
    let k2 = top_set(&s2.flat(), theta);
    let mut offset = 0;
    let tensors = s1
        .tensors
        .iter()
        .map(|(key, shape, v)| {
            let codes = (offset..offset + v.len())
                .map(|i| match (k1[i], k2[i]) {
                    (true, true) => SHARED,
                    (true, false) => S1_ONLY,
                    (false, true) => S2_ONLY,
                    (false, false) => UNUSED,
                })
                .collect();
            offset += v.len();
            (key.clone(), *shape, codes)
        })
        .collect();
    ElementMasks { tensors }
}

/// The elements a stage updates: its own system's elements plus the top `fraction` of the shared
/// ones ranked by that system's importance (`round(fraction · shared)` of them).
pub fn stage_active(
    masks: &ElementMasks,
    importance: &Importance,
    system: System,
    fraction: f64,
) -> Vec<(String, [usize; 2], Vec<bool>)> {
    let own = match system {
        System::S1 => S1_ONLY,
        System::S2 => S2_ONLY,
    };
    let codes: Vec<u8> = masks
        .tensors
        .iter()
        .flat_map(|t| t.2.iter().copied())
        .collect();
    let imp = importance.flat();
    let shared: Vec<usize> = codes
        .iter()
        .enumerate()
        .filter(|(_, c)| **c == SHARED)
        .map(|(i, _)| i)
        .collect();
    let shared_imp: Vec<f64> = shared.iter().map(|&i| imp[i]).collect();
    let take = (fraction.clamp(0.0, 1.0) * shared.len() as f64).round() as usize;
    let mut active: Vec<bool> = codes.iter().map(|&c| c == own).collect();
    for &j in ranked(&shared_imp).iter().take(take) {
        active[shared[j]] = true;
    }
    let mut offset = 0;
    masks
        .tensors
        .iter()
        .map(|(k, s, v)| {
            let a = active[offset..offset + v.len()].to_vec();
            offset += v.len();
            (k.clone(), *s, a)
        })
        .collect()
}

/// Count of set flags.
pub fn count_active(active: &[(String, [usize; 2], Vec<bool>)]) -> usize {
    active
        .iter()
        .map(|t| t.2.iter().filter(|&&a| a).count())
        .sum()
}

fn set_counts(codes: &[u8]) -> Value {
    let n = codes.len().max(1) as f64;
    let c = |code: u8| codes.iter().filter(|&&x| x == code).count();
    let (s1, s2, sh, un) = (c(S1_ONLY), c(S2_ONLY), c(SHARED), c(UNUSED));
    json!({
        "elements": codes.len(),
        "s1_only": s1, "s2_only": s2, "shared": sh, "unused": un,
        "s1_only_fraction": s1 as f64 / n, "s2_only_fraction": s2 as f64 / n,
        "shared_fraction": sh as f64 / n, "unused_fraction": un as f64 / n,
    })
}

/// `par_report.json`: settings, the four sets overall, per projection (`q_proj`, ...) and per
/// tensor, the Jaccard index of the two systems' sets, and the active elements of each stage.
pub fn report(
    masks: &ElementMasks,
    theta: f64,
    alpha: f64,
    beta: f64,
    stage1_active: usize,
    stage2_active: usize,
    extra: Value,
) -> Value {
    let all: Vec<u8> = masks
        .tensors
        .iter()
        .flat_map(|t| t.2.iter().copied())
        .collect();
    let mut per_module: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut per_tensor = serde_json::Map::new();
    for (key, _, codes) in &masks.tensors {
        let module = key
            .split('.')
            .rev()
            .find(|p| p.ends_with("_proj"))
            .unwrap_or("other")
            .to_string();
        per_module
            .entry(module)
            .or_default()
            .extend_from_slice(codes);
        per_tensor.insert(key.clone(), set_counts(codes));
    }
    let c = |code: u8| all.iter().filter(|&&x| x == code).count();
    let union = c(S1_ONLY) + c(S2_ONLY) + c(SHARED);
    let jaccard = if union == 0 {
        0.0
    } else {
        c(SHARED) as f64 / union as f64
    };
    let n = all.len().max(1) as f64;
    json!({
        "theta": theta,
        "alpha": alpha,
        "beta": beta,
        "overall": set_counts(&all),
        "jaccard_s1_s2": jaccard,
        "stage1_active": stage1_active,
        "stage1_active_fraction": stage1_active as f64 / n,
        "stage2_active": stage2_active,
        "stage2_active_fraction": stage2_active as f64 / n,
        "per_module": per_module.iter().map(|(k, v)| (k.clone(), set_counts(v))).collect::<serde_json::Map<_, _>>(),
        "per_tensor": per_tensor,
        "importance": extra,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn imp(v: Vec<f64>) -> Importance {
        Importance {
            tensors: vec![("m.q_proj.lora_A.weight".into(), [1, v.len()], v)],
        }
    }

    #[test]
    fn top_sets_and_codes() {
        assert_eq!(
            top_set(&[0.1, 0.5, 0.4, 0.0], 0.95),
            [true, true, true, false]
        );
        assert_eq!(
            top_set(&[0.1, 0.5, 0.4, 0.0], 0.5),
            [false, true, false, false]
        );
        assert_eq!(top_set(&[0.0, 0.0], 0.9), [false, false]);
        // ties: the lower index first
        assert_eq!(top_set(&[0.5, 0.5], 0.5), [true, false]);
        let a = imp(vec![0.6, 0.3, 0.1, 0.0]);
        let b = imp(vec![0.0, 0.3, 0.1, 0.6]);
        let m = partition(&a, &b, 0.85);
        assert_eq!(m.tensors[0].2, vec![S1_ONLY, SHARED, UNUSED, S2_ONLY]);
        let s1 = stage_active(&m, &a, System::S1, 1.0);
        assert_eq!(s1[0].2, [true, true, false, false]);
        let s1 = stage_active(&m, &a, System::S1, 0.0);
        assert_eq!(s1[0].2, [true, false, false, false]);
        let r = report(&m, 0.85, 1.0, 1.0, 2, 2, Value::Null);
        assert_eq!(r["overall"]["shared"], 1);
        assert_eq!(r["per_module"]["q_proj"]["unused"], 1);
        assert!((r["jaccard_s1_s2"].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-12);
    }
}
