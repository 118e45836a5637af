//! The `gati` binary end to end: `--json` contracts and one-line errors with a non-zero exit.

use std::process::Command;

fn gati() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gati"));
    c.env("GATI_QUIET", "1").env("GATI_HOME", env!("CARGO_TARGET_TMPDIR"));
    c
}

#[test]
fn eval_json_reports_accuracy_and_stage_profile() {
    let out = gati()
        .args([
            "eval",
            "--model",
            "resnet20",
            "--limit",
            "200",
            "--latency-samples",
            "30",
            "--threads",
            "1",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON object");
    assert_eq!(v["model"], "resnet20");
    assert_eq!(v["n"], 200);
    let top1 = v["top1"].as_f64().unwrap();
    assert!((70.0..=100.0).contains(&top1), "top1 {top1}");
    let lat = &v["latency_ms"];
    assert!(lat["p50"].as_f64().unwrap() > 0.0 && lat["p99"].as_f64() >= lat["p50"].as_f64());
    let stages = v["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 11);
    assert_eq!(stages[0]["name"], "stem");
    let last = stages.last().unwrap();
    assert_eq!(last["name"], "head");
    assert!((last["cum_fraction"].as_f64().unwrap() - 1.0).abs() < 1e-9);
    let fracs: Vec<f64> = stages.iter().map(|s| s["cum_fraction"].as_f64().unwrap()).collect();
    assert!(fracs.windows(2).all(|w| w[0] <= w[1]), "cumulative fractions rise");
}

fn one_line_error(args: &[&str]) -> String {
    let out = gati().args(args).output().unwrap();
    assert!(!out.status.success(), "{args:?} should fail");
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let last = err.lines().last().unwrap_or_default().to_string();
    assert!(last.starts_with("error: "), "{err}");
    last
}

#[test]
fn errors_are_one_line_naming_the_culprit() {
    let e = one_line_error(&["eval", "--model", "resnet7"]);
    assert!(e.contains("resnet7"), "{e}");
    // A model name is never a path: nothing is read or written outside the weights folders.
    let e = one_line_error(&["eval", "--model", "../../../tmp/evil"]);
    assert!(e.contains("unknown model '../../../tmp/evil'"), "{e}");
    let e = one_line_error(&["eval", "--model", "resnet20", "--data", "/nonexistent/cifar"]);
    assert!(e.contains("/nonexistent/cifar/test does not exist"), "{e}");
    let e = one_line_error(&[
        "import-weights",
        "--model",
        "resnet20",
        "/nonexistent.th",
        "/tmp/x.safetensors",
    ]);
    assert!(e.contains("/nonexistent.th does not exist"), "{e}");
    let plan = ["plan", "--model", "resnet20", "--out", "/tmp/never-written"];
    let e = one_line_error(&[&plan[..], &["--variants", "conv-pool,student"]].concat());
    assert!(e.contains("--variants student needs --student-init"), "{e}");
    let student = [&plan[..], &["--variants", "student", "--student-init", "resnet20"]].concat();
    let e = one_line_error(&[&student[..], &["--layers", "layer1.0"]].concat());
    assert!(e.contains("add stem to --layers"), "{e}");
    let e = one_line_error(&[&plan[..], &["--variants", "student", "--student-init", "resnet7"]].concat());
    assert!(e.contains("resnet7"), "{e}");
    let e = one_line_error(&[&plan[..], &["--variants", "conv-pool", "--students-beside"]].concat());
    assert!(
        e.contains("--students-beside is given but --variants has no student"),
        "{e}"
    );
    let e = one_line_error(&[&student[..], &["--students-beside", "--mode", "distributed"]].concat());
    assert!(e.contains("--students-beside is for --mode inline"), "{e}");
    let e = one_line_error(&[&plan[..], &["--variants", "gap", "--student-lr-factor", "0.01"]].concat());
    assert!(
        e.contains("--student-lr-factor is given but --variants has no student"),
        "{e}"
    );
    let e = one_line_error(&[&student[..], &["--student-lr-factor", "2"]].concat());
    assert!(e.contains("--student-lr-factor 2: must be in (0, 1]"), "{e}");
}

#[test]
fn stages_lists_names_and_shapes() {
    let out = gati()
        .args(["stages", "--model", "resnet56", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let st = v["stages"].as_array().unwrap();
    assert_eq!(st.len(), 29);
    assert_eq!(st[19]["name"], "layer3.0");
    assert_eq!(st[19]["output_shape"], serde_json::json!([1, 64, 8, 8]));
}

#[test]
fn plan_then_evaluate_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("plan");
    let plan_args = |budget: &str| {
        let o = out.to_str().unwrap().to_string();
        let mut v: Vec<String> = ["plan", "--model", "resnet20", "--train-limit", "500", "--epochs", "2"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(
            [
                "--test-limit",
                "400",
                "--layers",
                "layer2.2,layer3.1",
                "--variants",
                "gap,conv-pool",
            ]
            .map(String::from),
        );
        v.extend([
            "--budget".into(),
            budget.to_string(),
            "--out".into(),
            o,
            "--json".into(),
        ]);
        v
    };
    let run = |args: Vec<String>| -> serde_json::Value {
        let o = gati().args(&args).output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).expect("one JSON object")
    };
    let p = run(plan_args("0.05"));
    assert_eq!(p["trained"], true);
    assert_eq!(p["candidates"].as_array().unwrap().len(), 4);
    let plan = &p["plan"];
    assert_eq!(
        plan["calibration_samples"], 200,
        "every one of the 200 calibration images scores the plan (cross-fitted)"
    );
    assert!(plan["expected"]["fidelity_loss"].as_f64().unwrap() <= 0.05);
    assert!(out.join(plan["caches_file"].as_str().unwrap()).is_file());

    let e = run(vec![
        "evaluate".into(),
        "--plan".into(),
        out.to_str().unwrap().into(),
        "--json".into(),
    ]);
    assert_eq!(e["n"], 200);
    let per_layer: f64 = e["hit_rate_per_layer"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["hit_rate"].as_f64().unwrap())
        .sum();
    assert!((per_layer - e["hit_rate"].as_f64().unwrap()).abs() < 1e-9);
    let (loss, base, gati_) = (
        e["fidelity_loss"].as_f64().unwrap(),
        e["base_top1"].as_f64().unwrap(),
        e["gati_top1"].as_f64().unwrap(),
    );
    assert!((0.0..=1.0).contains(&loss));
    // Answers that differ from the base model can move top-1 by at most the fidelity loss.
    assert!((base - gati_).abs() <= 100.0 * loss + 1e-9);
    assert!(e["oracle_speedup"].as_f64().unwrap() >= 1.0);
    assert!(e["gati_latency_ms"]["p50"].as_f64().unwrap() > 0.0 && e["speedup"].as_f64().unwrap() > 0.0);

    // Exported with its base weights, moved elsewhere, it answers the same from its new place.
    let exported = dir.path().join("exported");
    run(vec![
        "export-plan".into(),
        "--plan".into(),
        out.to_str().unwrap().into(),
        "--out".into(),
        exported.to_str().unwrap().into(),
        "--json".into(),
    ]);
    let moved = dir.path().join("moved-elsewhere");
    std::fs::rename(&exported, &moved).unwrap();
    let written: serde_json::Value = serde_json::from_slice(&std::fs::read(moved.join("plan.json")).unwrap()).unwrap();
    assert_eq!(written["weights"], "base.safetensors");
    let e2 = run(vec![
        "evaluate".into(),
        "--plan".into(),
        moved.to_str().unwrap().into(),
        "--json".into(),
    ]);
    for k in ["n", "hit_rate", "fidelity_loss", "gati_top1"] {
        assert_eq!(e2[k], e[k], "{k}");
    }

    // Another budget re-plans from the kept candidates without training again.
    let p2 = run(plan_args("0.0"));
    assert_eq!(p2["trained"], false);
    assert_eq!(p2["plan"]["expected"]["fidelity_loss"], 0.0);
}
