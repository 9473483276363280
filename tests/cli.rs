//! The `fcos-loss` binary: demo, `check` on golden files (table and JSON), bad files.

use std::path::Path;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fcos-loss"))
}

fn data(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
        .display()
        .to_string()
}

#[test]
fn check_json_reports_gpu_and_cpu() {
    for reg in ["iou", "giou"] {
        let out = bin()
            .args([
                "check",
                &data("odd_b3_c7_100x150.safetensors"),
                "--reg",
                reg,
                "--json",
            ])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{reg}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
        assert!(v["adapter"].as_str().unwrap().contains('('));
        for side in ["gpu", "cpu"] {
            for key in ["cls_loss", "cnt_loss", "reg_loss", "num_pos"] {
                assert_eq!(v[side][key].as_array().unwrap().len(), 3, "{side}.{key}");
            }
            assert!(v[side]["total"].as_f64().unwrap().is_finite());
        }
        assert!(v["max_rel_err"]["gpu_vs_expected"].as_f64().unwrap() <= 1e-4);
        assert_eq!(v["ok"], serde_json::Value::Bool(true));
    }
}

#[test]
fn check_table_passes_on_every_golden_file() {
    for name in ["voc_b2_c20_512x512", "single_b1_c1_64x64"] {
        let out = bin()
            .args(["check", &data(&format!("{name}.safetensors"))])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{name}: {stdout}");
        assert!(
            stdout.contains("largest relative error GPU vs expected"),
            "{stdout}"
        );
    }
}

#[test]
fn check_fails_when_expected_values_disagree() {
    // Rewrite a golden case with a wrong expected cls loss.
    let mut case =
        fcos_loss::io::read_case(Path::new(&data("single_b1_c1_64x64.safetensors"))).unwrap();
    case.expected.as_mut().unwrap().cls_loss[0] *= 1.01;
    let path =
        std::env::temp_dir().join(format!("fcos-cli-wrong-{}.safetensors", std::process::id()));
    fcos_loss::io::write_case(&path, &case).unwrap();
    let out = bin()
        .args(["check", &path.display().to_string()])
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn bad_files_get_one_line_errors() {
    let garbage = std::env::temp_dir().join(format!(
        "fcos-cli-garbage-{}.safetensors",
        std::process::id()
    ));
    std::fs::write(&garbage, b"definitely not safetensors").unwrap();
    let dir = std::env::temp_dir();
    for path in [
        garbage.display().to_string(),
        dir.display().to_string(),
        "/nonexistent/x.safetensors".into(),
    ] {
        let out = bin().args(["check", &path]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{path}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{path}: {stderr}");
        assert!(stderr.starts_with("error: "), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let _ = std::fs::remove_file(&garbage);
}

#[test]
fn demo_runs_on_a_small_batch() {
    let out = bin()
        .args([
            "demo",
            "--batch",
            "2",
            "--classes",
            "20",
            "--image",
            "256x320",
            "--reps",
            "2",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("largest relative difference GPU vs CPU"),
        "{stdout}"
    );
    assert!(stdout.contains("GPU call"), "{stdout}");
}

#[test]
fn grad_writes_gradients_in_the_input_shapes() {
    for reg in ["iou", "giou"] {
        let out_path = std::env::temp_dir().join(format!(
            "fcos-cli-grad-{reg}-{}.safetensors",
            std::process::id()
        ));
        let out = bin()
            .args([
                "grad",
                &data("odd_b3_c7_100x150.safetensors"),
                "--out",
                &out_path.display().to_string(),
                "--reg",
                reg,
                "--json",
            ])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{reg}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
        for head in ["cls_logits", "cnt_logits", "reg_preds"] {
            assert!(
                v["max_grad_err"]["gpu_vs_expected"][head].as_f64().unwrap() <= 1e-4,
                "{head}"
            );
            assert!(
                v["max_grad_err"]["gpu_vs_cpu"][head].as_f64().unwrap() <= 1e-4,
                "{head}"
            );
        }
        let bytes = std::fs::read(&out_path).unwrap();
        let _ = std::fs::remove_file(&out_path);
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(
            st.tensor("grad.cls_logits.0").unwrap().shape(),
            &[3, 7, 13, 19]
        );
        assert_eq!(
            st.tensor("grad.cnt_logits.4").unwrap().shape(),
            &[3, 1, 1, 2]
        );
        assert_eq!(
            st.tensor("grad.reg_preds.2").unwrap().shape(),
            &[3, 4, 4, 5]
        );
        assert_eq!(st.tensor("loss.reg").unwrap().shape(), &[3]);
    }
}
