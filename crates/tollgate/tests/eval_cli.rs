//! `tollgate eval routing` as a user runs it: the real binary over a small labeled file, with the
//! case bank (the default) and without memory.

use std::path::{Path, PathBuf};
use std::process::Command;

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// The keys `--json` prints: the six the issue names, and the three that give them context.
const KEYS: [&str; 9] = [
    "accuracy",
    "apgr",
    "cpt50",
    "cpt80",
    "random_apgr",
    "rows",
    "strong_accuracy",
    "strong_share",
    "weak_accuracy",
];

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> TestResult<Self> {
        let path =
            std::env::temp_dir().join(format!("tollgate-eval-cli-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// 120 rows in the data set's format (with a `subject` the router must not need): questions
/// about "reactor" fail on the weak model, the others do not.
fn write_data(dir: &Path) -> TestResult<PathBuf> {
    let mut text = String::new();
    for i in 0..120 {
        let hard = i % 4 == 0;
        let prompt = if hard {
            format!("Which reactor coolant loop design limits pressure {i}?")
        } else {
            format!(
                "What is {i} plus {} in decimal notation, please answer briefly?",
                i + 3
            )
        };
        let row = serde_json::json!({
            "id": format!("synthetic/{i}"),
            "source": "synthetic",
            "subject": if hard { "physics" } else { "arithmetic" },
            "prompt": prompt,
            "weak_correct": !hard,
            "strong_correct": true,
        });
        text.push_str(&row.to_string());
        text.push('\n');
    }
    let path = dir.join("rows.jsonl");
    std::fs::write(&path, text)?;
    Ok(path)
}

fn tollgate(args: &[&str]) -> TestResult<String> {
    let output = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .env_clear()
        .env("TMPDIR", std::env::temp_dir())
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "tollgate {args:?}: {stderr}");
    Ok(String::from_utf8(output.stdout)?)
}

#[test]
fn json_prints_one_object_with_the_report_keys_for_both_memories() -> TestResult {
    let scratch = Scratch::new("json")?;
    let data = write_data(&scratch.0)?;
    let data = data.to_str().ok_or("path")?;
    let mut apgrs = Vec::new();
    for memory in ["casebank", "none"] {
        let stdout = tollgate(&[
            "eval", "routing", "--data", data, "--seed", "3", "--json", "--memory", memory,
        ])?;
        assert_eq!(stdout.lines().count(), 1, "{stdout}");
        let report: serde_json::Value = serde_json::from_str(&stdout)?;
        let object = report.as_object().ok_or("not an object")?;
        let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, KEYS, "{stdout}");
        for key in KEYS {
            assert!(object[key].is_number(), "{key} in {stdout}");
        }
        assert_eq!(report["rows"], 120);
        for key in ["strong_share", "accuracy", "cpt50", "cpt80"] {
            let value = report[key].as_f64().ok_or(key)?;
            assert!((0.0..=1.0).contains(&value), "{key} = {value}");
        }
        apgrs.push(report["apgr"].as_f64().ok_or("apgr")?);
    }
    // The family the weak model fails is learned from the first few outcomes.
    assert!(
        apgrs[0] > apgrs[1],
        "casebank {} vs none {}",
        apgrs[0],
        apgrs[1]
    );
    Ok(())
}

#[test]
fn text_output_names_the_metrics_and_plot_writes_an_svg() -> TestResult {
    let scratch = Scratch::new("plot")?;
    let data = write_data(&scratch.0)?;
    let plot = scratch.0.join("curve.svg");
    let stdout = tollgate(&[
        "eval",
        "routing",
        "--data",
        data.to_str().ok_or("path")?,
        "--plot",
        plot.to_str().ok_or("path")?,
    ])?;
    for needle in [
        "APGR",
        "CPT(50%)",
        "CPT(80%)",
        "strong calls",
        "random router",
    ] {
        assert!(stdout.contains(needle), "{needle} missing from {stdout}");
    }
    let svg = std::fs::read_to_string(&plot)?;
    assert!(svg.starts_with("<svg"), "{svg}");
    for label in [
        "perfect",
        "random",
        "routing score",
        "policy operating point",
    ] {
        assert!(svg.contains(label), "{label} missing from the plot");
    }
    Ok(())
}

#[test]
fn a_policy_file_sets_the_operating_point_and_a_bad_one_is_refused() -> TestResult {
    let scratch = Scratch::new("policy")?;
    let data = write_data(&scratch.0)?;
    let data = data.to_str().ok_or("path")?;
    // Routing switched off: every request gets the default (cheap) tier, so no strong call.
    let off = scratch.0.join("off.toml");
    std::fs::write(&off, "[switches]\nrouting = false\n")?;
    let stdout = tollgate(&[
        "eval",
        "routing",
        "--data",
        data,
        "--json",
        "--policy",
        off.to_str().ok_or("path")?,
    ])?;
    let report: serde_json::Value = serde_json::from_str(&stdout)?;
    assert_eq!(report["strong_share"], 0.0, "{stdout}");
    assert_eq!(report["accuracy"], report["weak_accuracy"], "{stdout}");

    let bad = scratch.0.join("bad.toml");
    std::fs::write(&bad, "[casebank]\ncheap_ok = 0.2\n")?;
    let output = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["eval", "routing", "--data", data, "--policy"])
        .arg(&bad)
        .output()?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cheap_fail"), "{stderr}");
    Ok(())
}
