//! The `fcos-loss` binary: demo, `check` on golden files (table and JSON), bad files.

use std::path::Path;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fcos-loss"))
}

/// Runs the binary with `args`, asserts success, and parses its one JSON object.
fn run_json(args: &[&str]) -> serde_json::Value {
    let out = bin().args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{args:?}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).expect("one JSON object")
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
        let v = run_json(&[
            "check",
            &data("odd_b3_c7_100x150.safetensors"),
            "--reg",
            reg,
            "--json",
        ]);
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
        let out_arg = out_path.display().to_string();
        let v = run_json(&[
            "grad",
            &data("odd_b3_c7_100x150.safetensors"),
            "--out",
            &out_arg,
            "--reg",
            reg,
            "--json",
        ]);
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

/// Files a PyTorch user might hand over with a defect: each gets exit code 2 and one
/// line naming the tensor.
#[test]
fn defective_case_files_name_the_tensor() {
    use safetensors::tensor::{serialize, Dtype, TensorView};
    let case =
        fcos_loss::io::read_case(Path::new(&data("single_b1_c1_64x64.safetensors"))).unwrap();
    let b = &case.batch;
    type Tensor = (String, Vec<usize>, Vec<u8>, Dtype);
    let mut tensors: Vec<Tensor> = Vec::new();
    for (head, ch, data) in [
        ("cls_logits", b.classes, &b.cls_logits),
        ("cnt_logits", 1, &b.cnt_logits),
        ("reg_preds", 4, &b.reg_preds),
    ] {
        for (l, v) in data.iter().enumerate() {
            let (h, w) = b.levels.shapes()[l];
            tensors.push((
                format!("{head}.{l}"),
                vec![b.batch, ch, h as usize, w as usize],
                bytemuck::cast_slice(v).to_vec(),
                Dtype::F32,
            ));
        }
    }
    let p = b.levels.positions();
    tensors.push((
        "cls_targets".into(),
        vec![b.batch, p, 1],
        bytemuck::cast_slice(&b.cls_targets).to_vec(),
        Dtype::F32,
    ));
    tensors.push((
        "cnt_targets".into(),
        vec![b.batch, p, 1],
        bytemuck::cast_slice(&b.cnt_targets).to_vec(),
        Dtype::F32,
    ));
    tensors.push((
        "reg_targets".into(),
        vec![b.batch, p, 4],
        bytemuck::cast_slice(&b.reg_targets).to_vec(),
        Dtype::F32,
    ));
    let write = |name: &str, ts: &[Tensor]| -> String {
        let views: Vec<(String, TensorView)> = ts
            .iter()
            .map(|(n, s, d, t)| (n.clone(), TensorView::new(*t, s.clone(), d).unwrap()))
            .collect();
        let bytes = serialize(views, None).unwrap();
        let path = std::env::temp_dir().join(format!(
            "fcos-cli-{name}-{}.safetensors",
            std::process::id()
        ));
        std::fs::write(&path, bytes).unwrap();
        path.display().to_string()
    };
    let mut variants: Vec<(&str, Vec<Tensor>, &str)> = Vec::new();
    variants.push((
        "missing",
        tensors
            .iter()
            .filter(|t| t.0 != "reg_targets")
            .cloned()
            .collect(),
        "reg_targets",
    ));
    let mut rank = tensors.clone();
    rank[0].1 = vec![rank[0].1.iter().product()];
    variants.push(("rank", rank, "cls_logits.0"));
    let mut dtype = tensors.clone();
    let n: usize = dtype[1].1.iter().product();
    dtype[1].2 = vec![1u8; n];
    dtype[1].3 = Dtype::U8;
    variants.push(("u8", dtype, "cls_logits.1"));
    let mut boolean = tensors.clone();
    let last = boolean.len() - 3;
    let n: usize = boolean[last].1.iter().product();
    boolean[last].2 = vec![0u8; n];
    boolean[last].3 = Dtype::BOOL;
    variants.push(("bool", boolean, "cls_targets"));
    let mut nan = tensors.clone();
    nan[0].2[0..4].copy_from_slice(&f32::NAN.to_le_bytes());
    variants.push(("nan", nan, "cls_logits.0"));
    let mut short = tensors.clone();
    let at = short.len() - 2;
    short[at].1[1] -= 1; // cnt_targets with one position too few
    let n: usize = short[at].1.iter().product();
    short[at].2.truncate(4 * n);
    variants.push(("length", short, "cnt_targets"));
    // A truncated file (the first half of a valid one) names the file.
    let whole = write("whole", &tensors);
    let bytes = std::fs::read(&whole).unwrap();
    std::fs::write(&whole, &bytes[..bytes.len() / 2]).unwrap();
    let out = bin().args(["check", &whole]).output().unwrap();
    let _ = std::fs::remove_file(&whole);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "truncated: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "truncated: {stderr}");
    assert!(stderr.contains("fcos-cli-whole"), "truncated: {stderr}");
    // What PyTorch dumps: f64 logits and int64 class targets are accepted.
    let mut torchy = tensors.clone();
    for t in torchy.iter_mut() {
        let floats: Vec<f32> = bytemuck::pod_collect_to_vec(&t.2);
        if t.0 == "cls_targets" {
            t.2 = floats
                .iter()
                .flat_map(|&x| (x as i64).to_le_bytes())
                .collect();
            t.3 = Dtype::I64;
        } else {
            t.2 = floats
                .iter()
                .flat_map(|&x| (x as f64).to_le_bytes())
                .collect();
            t.3 = Dtype::F64;
        }
    }
    let path = write("torchy", &torchy);
    let out = bin().args(["check", &path, "--json"]).output().unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "f64/i64: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (name, ts, tensor) in variants {
        let path = write(name, &ts);
        let out = bin().args(["check", &path]).output().unwrap();
        let _ = std::fs::remove_file(&path);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let line = stderr
            .lines()
            .filter(|l| l.starts_with("error: "))
            .collect::<Vec<_>>();
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert_eq!(line.len(), 1, "{name}: {stderr}");
        assert!(line[0].contains(tensor), "{name}: {stderr}");
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
    }
}

#[test]
fn bench_json_has_the_documented_keys() {
    let v = run_json(&[
        "bench",
        "--preset",
        "voc",
        "--batch",
        "1",
        "--image",
        "128x160",
        "--reps",
        "2",
        "--cpu-reps",
        "1",
        "--json",
    ]);
    for key in [
        "kernel_ms",
        "call_ms",
        "device_call_ms",
        "roofline_ms",
        "kernel_over_roofline",
        "cpu_ms",
        "backward_kernel_ms",
        "backward_roofline_ms",
        "backward_over_roofline",
        "checks_kernel_cost",
    ] {
        assert!(
            v[key].as_f64().is_some_and(|x| x.is_finite() && x > 0.0),
            "{key}: {v}"
        );
    }
    assert!(v["adapter"].as_str().is_some());
    assert!(v["max_rel_diff"].as_f64().unwrap() <= 1e-4);
}

/// A batch the device cannot take, or one whose sizes overflow, is refused before
/// the synthetic batch is drawn: exit code 2 and one `error:` line, no abort and no
/// attempt to allocate it.
#[test]
fn oversized_demo_and_bench_batches_exit_2() {
    for args in [
        &["demo", "--batch", "1000000000000", "--image", "8x8"][..],
        &["demo", "--batch", "2305843009213693952", "--image", "16x16"][..],
        &[
            "bench",
            "--batch",
            "1000000000000",
            "--image",
            "8x8",
            "--reps",
            "1",
        ][..],
    ] {
        let out = bin().args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(
            lines.len() == 1 && lines[0].starts_with("error:"),
            "{args:?}: {stderr}"
        );
        assert!(
            lines[0].contains("max_buffer_size") || lines[0].contains("batch"),
            "{args:?}: {stderr}"
        );
    }
}
