//! `wgtune bench --methods` writes JSON that validates against benches/schema.json (as do the
//! committed result files, ours and the torch+peft peer's), with parameter counts that follow
//! from the settings. No timing is asserted.

use crate::common::root;
use serde_json::Value;
use std::process::Command;

/// The JSON-Schema subset benches/schema.json uses: type (incl. lists), required, properties,
/// items, enum.
fn validate(v: &Value, schema: &Value, path: &str) -> Result<(), String> {
    let type_ok = |t: &str| match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_u64() || v.is_i64(),
        "number" => v.is_number(),
        "null" => v.is_null(),
        "boolean" => v.is_boolean(),
        _ => false,
    };
    match &schema["type"] {
        Value::String(t) if !type_ok(t) => return Err(format!("{path}: not {t}: {v}")),
        Value::Array(ts) if !ts.iter().any(|t| type_ok(t.as_str().unwrap_or(""))) => {
            return Err(format!("{path}: none of {ts:?}: {v}"));
        }
        _ => {}
    }
    if let Some(e) = schema["enum"].as_array()
        && !e.contains(v)
    {
        return Err(format!("{path}: {v} not in {e:?}"));
    }
    for key in schema["required"].as_array().into_iter().flatten() {
        let key = key.as_str().unwrap();
        if v.get(key).is_none() {
            return Err(format!("{path}: missing `{key}`"));
        }
    }
    if let Some(props) = schema["properties"].as_object() {
        for (k, s) in props {
            if let Some(x) = v.get(k) {
                validate(x, s, &format!("{path}.{k}"))?;
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), v.as_array()) {
        for (i, x) in arr.iter().enumerate() {
            validate(x, items, &format!("{path}[{i}]"))?;
        }
    }
    Ok(())
}

fn schema() -> Value {
    serde_json::from_str(&std::fs::read_to_string(root().join("benches/schema.json")).unwrap())
        .unwrap()
}

#[test]
fn step_bench_json_matches_schema_and_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("b.json");
    let o = Command::new(env!("CARGO_BIN_EXE_wgtune"))
        .args([
            "bench",
            "--backend",
            "cpu",
            "--methods",
            "lora,oft,oft-v1,qlora,qoft",
            "--layers",
            "1",
            "--hidden",
            "64",
            "--intermediate",
            "128",
            "--heads",
            "2",
            "--vocab",
            "300",
            "--seq",
            "8",
            "--batch",
            "2",
            "--iters",
            "1",
            "--json",
        ])
        .arg(&json)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    validate(&v, &schema(), "$").unwrap();
    let r = v["results"].as_array().unwrap();
    let methods: Vec<&str> = r.iter().map(|x| x["method"].as_str().unwrap()).collect();
    assert_eq!(methods, ["lora", "oft", "oft-v1", "qlora", "qoft"]);
    // LoRA r 16 on all seven projections: 16·(in + out) each; OFT block 32: in/32 blocks of
    // 32·31/2 each. One layer, hidden 64, intermediate 128, 2 heads (kv = q).
    let lora = 16 * ((64 + 64) * 4 + (64 + 128) * 2 + (128 + 64));
    let oft = 496 * (2 * 6 + 4);
    let params: Vec<u64> = r
        .iter()
        .map(|x| x["trainable_params"].as_u64().unwrap())
        .collect();
    assert_eq!(params, [lora, oft, oft, lora, oft]);
    for x in r {
        assert!(x["tokens_per_s"].as_f64().unwrap() > 0.0);
        assert_eq!(x["dense_linears"], 7, "cpu: every base linear dense");
    }
}

#[test]
fn committed_results_match_schema() {
    let dir = root().join("benches/results");
    let mut tools = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "json") {
            let v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            validate(&v, &schema(), &p.display().to_string()).unwrap();
            tools.push(v["tool"].as_str().unwrap().to_string());
        }
    }
    tools.sort();
    tools.dedup();
    assert_eq!(tools, ["torch+peft", "wgtune"], "{}", dir.display());
}
