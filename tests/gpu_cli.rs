//! The `fcos-loss` binary on a GPU adapter: demo, `check` on golden files (table
//! and JSON), `grad`, `bench`, bad files and batches, exit codes.
//!
//! The CLI prints its own errors as lines starting with `fcos-loss: error: `.
//! Drivers write to stderr too (Mesa prints `error: XDG_RUNTIME_DIR is invalid or
//! not set in the environment.` when that variable is unset), so these tests look
//! only at the CLI's own lines, never at the whole of stderr.
#![cfg(feature = "cli")]

use std::path::Path;
use std::process::{Command, Output};

use fcos_loss::{Head, Input, TensorLayout};

/// The prefix of every error line the CLI itself prints.
const ERROR_PREFIX: &str = "fcos-loss: error: ";

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fcos-loss"))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The CLI's own error lines on stderr (those with [`ERROR_PREFIX`]).
fn cli_errors(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with(ERROR_PREFIX))
        .collect()
}

/// Asserts exit code `code` and exactly one CLI error line, and returns that line.
fn one_error(what: &str, out: &Output, code: i32) -> String {
    let stderr = stderr(out);
    assert_eq!(out.status.code(), Some(code), "{what}: {stderr}");
    let lines = cli_errors(&stderr);
    assert_eq!(
        lines.len(),
        1,
        "{what}: one CLI error line wanted: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    lines[0].to_string()
}

/// Runs the binary with `args`, asserts success, and parses its one JSON object.
fn run_json(args: &[&str]) -> serde_json::Value {
    let out = bin().args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{args:?}: {stdout}\n{}", stderr(&out));
    serde_json::from_str(stdout.trim()).expect("one JSON object")
}

fn data(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
        .display()
        .to_string()
}

fn temp_path(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("fcos-cli-{tag}-{}.safetensors", std::process::id()))
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
        assert!(cli_errors(&stderr(&out)).is_empty(), "{}", stderr(&out));
    }
}

/// Results outside the tolerances: exit code 1. The table says FAILED on stdout;
/// `--json` also prints one CLI error line.
#[test]
fn check_fails_when_expected_values_disagree() {
    // Rewrite a golden case with a wrong expected cls loss.
    let mut case =
        fcos_loss::casefile::read_case(Path::new(&data("single_b1_c1_64x64.safetensors"))).unwrap();
    case.expected.as_mut().unwrap().cls_loss[0] *= 1.01;
    let path = temp_path("wrong");
    fcos_loss::casefile::write_case(&path, &case).unwrap();
    let file = path.display().to_string();
    let table = bin().args(["check", &file]).output().unwrap();
    let json = bin().args(["check", &file, "--json"]).output().unwrap();
    let _ = std::fs::remove_file(&path);
    let stdout = String::from_utf8_lossy(&table.stdout);
    assert_eq!(table.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAILED"), "{stdout}");
    assert!(cli_errors(&stderr(&table)).is_empty(), "{}", stderr(&table));
    let line = one_error("check --json", &json, 1);
    assert!(line.contains("beyond tolerance"), "{line}");
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("one JSON object");
    assert_eq!(v["ok"], serde_json::Value::Bool(false));
}

#[test]
fn bad_files_get_one_line_errors() {
    let garbage = temp_path("garbage");
    std::fs::write(&garbage, b"definitely not safetensors").unwrap();
    let dir = std::env::temp_dir();
    for path in [
        garbage.display().to_string(),
        dir.display().to_string(),
        "/nonexistent/x.safetensors".into(),
    ] {
        let out = bin().args(["check", &path]).output().unwrap();
        let line = one_error(&path, &out, 2);
        assert!(line.contains(&path), "{path}: {line}");
    }
    let _ = std::fs::remove_file(&garbage);
}

/// Usage errors are clap's, under the CLI's prefix: exit code 2, one error line
/// (clap's usage hint follows it).
#[test]
fn usage_errors_exit_2_with_one_error_line() {
    for args in [
        &["demo", "--frobnicate"][..],
        &["check"][..],
        &["grad", &data("odd_b3_c7_100x150.safetensors")][..],
        &["demo", "--reg", "l1"][..],
        &[
            "check",
            &data("odd_b3_c7_100x150.safetensors"),
            "--norm",
            "global",
        ][..],
    ] {
        let out = bin().args(args).output().unwrap();
        one_error(&format!("{args:?}"), &out, 2);
    }
    for args in [
        &["--help"][..],
        &["check", "--help"][..],
        &["--version"][..],
    ] {
        let out = bin().args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert!(!out.stdout.is_empty(), "{args:?}");
    }
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
    assert!(out.status.success(), "{stdout}\n{}", stderr(&out));
    assert!(
        stdout.contains("largest relative difference GPU vs CPU"),
        "{stdout}"
    );
    assert!(stdout.contains("GPU call"), "{stdout}");
}

#[test]
fn grad_writes_gradients_in_the_input_shapes() {
    for reg in ["iou", "giou"] {
        let out_path = temp_path(&format!("grad-{reg}"));
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
        for head in Head::ALL.map(Head::name) {
            let err = &v["max_grad_err"];
            assert!(
                err["gpu_vs_expected"][head].as_f64().unwrap() <= 1e-4,
                "{head}"
            );
            assert!(err["gpu_vs_cpu"][head].as_f64().unwrap() <= 1e-4, "{head}");
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

/// `(name, shape, bytes, dtype)` of one tensor of a hand-made case file.
type Tensor = (String, Vec<usize>, Vec<u8>, safetensors::Dtype);

/// The inputs of a golden case as `F32` tensors in the case-file names.
fn golden_tensors(name: &str) -> Vec<Tensor> {
    let case = fcos_loss::casefile::read_case(Path::new(&data(name))).unwrap();
    let b = &case.batch;
    let (inputs, p) = (b.inputs(), b.levels.positions());
    let mut tensors = Vec::new();
    for input in Input::ALL {
        let ch = input.channels(b.classes);
        for (l, part) in inputs.parts(input).iter().enumerate() {
            let (name, shape) = match input.layout() {
                TensorLayout::PerLevel => {
                    let (h, w) = b.levels.shapes()[l];
                    (
                        format!("{input}.{l}"),
                        vec![b.batch, ch, h as usize, w as usize],
                    )
                }
                TensorLayout::Flattened => (input.name().to_string(), vec![b.batch, p, ch]),
            };
            let bytes = bytemuck::cast_slice(part).to_vec();
            tensors.push((name, shape, bytes, safetensors::Dtype::F32));
        }
    }
    tensors
}

/// Writes `ts` to a temporary safetensors file; its path.
fn write_tensors(tag: &str, ts: &[Tensor]) -> String {
    use safetensors::tensor::{serialize, TensorView};
    let views: Vec<(String, TensorView)> = ts
        .iter()
        .map(|(n, s, d, t)| (n.clone(), TensorView::new(*t, s.clone(), d).unwrap()))
        .collect();
    let path = temp_path(tag);
    std::fs::write(&path, serialize(views, None).unwrap()).unwrap();
    path.display().to_string()
}

/// `ts` with the tensor called `name` changed by `f`.
fn with(ts: &[Tensor], name: &str, f: impl FnOnce(&mut Tensor)) -> Vec<Tensor> {
    let mut ts = ts.to_vec();
    f(ts.iter_mut()
        .find(|t| t.0 == name)
        .expect("a tensor of that name"));
    ts
}

/// `ts` as PyTorch dumps them: `F64` floats and `I64` class targets.
fn as_pytorch_dumps(ts: &[Tensor]) -> Vec<Tensor> {
    use safetensors::Dtype;
    ts.iter()
        .map(|(n, s, d, _)| {
            let floats: Vec<f32> = bytemuck::pod_collect_to_vec(d);
            let (bytes, dtype) = if n == "cls_targets" {
                let ints = floats.iter().flat_map(|&x| (x as i64).to_le_bytes());
                (ints.collect(), Dtype::I64)
            } else {
                let wide = floats.iter().flat_map(|&x| (x as f64).to_le_bytes());
                (wide.collect(), Dtype::F64)
            };
            (n.clone(), s.clone(), bytes, dtype)
        })
        .collect()
}

/// Files a PyTorch user might hand over with a defect: each gets exit code 2 and one
/// CLI error line naming the tensor.
#[test]
fn defective_case_files_name_the_tensor() {
    use safetensors::Dtype;
    let tensors = golden_tensors("single_b1_c1_64x64.safetensors");
    let elements = |t: &Tensor| t.1.iter().product::<usize>();
    let variants: Vec<(&str, Vec<Tensor>, &str)> = vec![
        (
            "missing",
            tensors
                .iter()
                .filter(|t| t.0 != "reg_targets")
                .cloned()
                .collect(),
            "reg_targets",
        ),
        (
            "rank",
            with(&tensors, "cls_logits.0", |t| t.1 = vec![elements(t)]),
            "cls_logits.0",
        ),
        (
            "u8",
            with(&tensors, "cls_logits.1", |t| {
                (t.2, t.3) = (vec![1u8; elements(t)], Dtype::U8);
            }),
            "cls_logits.1",
        ),
        (
            "bool",
            with(&tensors, "cls_targets", |t| {
                (t.2, t.3) = (vec![0u8; elements(t)], Dtype::BOOL);
            }),
            "cls_targets",
        ),
        (
            "nan",
            with(&tensors, "cls_logits.0", |t| {
                t.2[0..4].copy_from_slice(&f32::NAN.to_le_bytes());
            }),
            "cls_logits.0",
        ),
        (
            // One position too few.
            "length",
            with(&tensors, "cnt_targets", |t| {
                t.1[1] -= 1;
                t.2.truncate(4 * elements(t));
            }),
            "cnt_targets",
        ),
    ];
    // A truncated file (the first half of a valid one) names the file.
    let whole = write_tensors("whole", &tensors);
    let bytes = std::fs::read(&whole).unwrap();
    std::fs::write(&whole, &bytes[..bytes.len() / 2]).unwrap();
    let out = bin().args(["check", &whole]).output().unwrap();
    let _ = std::fs::remove_file(&whole);
    let line = one_error("truncated", &out, 2);
    assert!(line.contains("fcos-cli-whole"), "truncated: {line}");
    // What PyTorch dumps: f64 logits and int64 class targets are accepted.
    let torchy = as_pytorch_dumps(&tensors);
    let path = write_tensors("torchy", &torchy);
    let out = bin().args(["check", &path, "--json"]).output().unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(out.status.success(), "f64/i64: {}", stderr(&out));
    for (name, ts, tensor) in variants {
        let path = write_tensors(name, &ts);
        let out = bin().args(["check", &path]).output().unwrap();
        let _ = std::fs::remove_file(&path);
        let line = one_error(name, &out, 2);
        assert!(line.contains(tensor), "{name}: {line}");
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
/// the synthetic batch is drawn: exit code 2 and one CLI error line, no abort and
/// no attempt to allocate it. Run with and without `XDG_RUNTIME_DIR`, whatever the
/// test's own environment: without it Mesa adds its own `error:` lines, which
/// must not count.
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
        for unset in [false, true] {
            let mut cmd = bin();
            if unset {
                cmd.env_remove("XDG_RUNTIME_DIR");
            }
            let out = cmd.args(args).output().unwrap();
            let what = format!("{args:?} (XDG_RUNTIME_DIR unset: {unset})");
            let line = one_error(&what, &out, 2);
            assert!(
                line.contains("max_buffer_size") || line.contains("batch"),
                "{what}: {line}"
            );
        }
    }
}

/// The golden cases made from ground-truth boxes: they carry `expected.sums.*`,
/// `expected.batch.*`, `expected.global_ctr.*` and `expected.grad_global_ctr.*`.
const BOX_CASES: [&str; 3] = [
    "boxes_voc_b2_c20_512x512_m12",
    "boxes_odd_b3_c7_100x150_m9",
    "boxes_coco_b1_c80_320x480_m40",
];

/// `--norm batch|global-ctr`: every golden box case passes `check`, as a table
/// (which names the mode and compares with the file's values) and as JSON (the
/// objective as one-element lists, the raw sums per image), IoU and GIoU.
#[test]
fn check_norm_modes_pass_on_every_box_case() {
    for name in BOX_CASES {
        let file = data(&format!("{name}.safetensors"));
        let case = fcos_loss::casefile::read_case(Path::new(&file)).unwrap();
        let b = case.batch.batch;
        for norm in ["batch", "global-ctr"] {
            let out = bin()
                .args(["check", &file, "--norm", norm])
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            let what = format!("{name} --norm {norm}");
            assert!(out.status.success(), "{what}: {stdout}\n{}", stderr(&out));
            assert!(
                stdout.contains(&format!("norm = {norm}")),
                "{what}: {stdout}"
            );
            assert!(
                stdout.contains("largest relative error GPU vs expected"),
                "{what}: {stdout}"
            );
            assert!(stdout.contains(": ok"), "{what}: {stdout}");
            for reg in ["iou", "giou"] {
                let what = format!("{what} --reg {reg}");
                let v = run_json(&["check", &file, "--norm", norm, "--reg", reg, "--json"]);
                assert_eq!(v["norm"], norm, "{what}");
                for side in ["gpu", "cpu", "expected"] {
                    for key in ["cls_loss", "cnt_loss", "reg_loss"] {
                        let x = v[side][key]
                            .as_array()
                            .unwrap_or_else(|| panic!("{what}: {side}.{key}: {v}"));
                        assert_eq!(x.len(), 1, "{what}: {side}.{key}");
                        assert!(x[0].as_f64().unwrap().is_finite(), "{what}: {side}.{key}");
                    }
                    for key in ["cls", "cnt", "reg", "reg_w", "num_pos", "ctr"] {
                        let x = v[side]["sums"][key].as_array();
                        assert_eq!(x.map(Vec::len), Some(b), "{what}: {side}.sums.{key}: {v}");
                    }
                }
                assert_eq!(v["gpu"]["sums"]["num_pos"], v["cpu"]["sums"]["num_pos"]);
                let err = &v["max_rel_err"];
                for key in ["gpu_vs_cpu", "gpu_vs_expected", "cpu_vs_expected"] {
                    assert!(err[key].as_f64().unwrap() <= 1e-4, "{what}: {key}: {v}");
                }
                assert_eq!(v["ok"], serde_json::Value::Bool(true), "{what}");
                // The file's objective, for this mode and box loss.
                let e = case.expected.as_ref().unwrap();
                let obj = if norm == "batch" {
                    e.batch
                } else {
                    e.global_ctr
                }
                .unwrap();
                let want = if reg == "iou" {
                    obj.reg_loss
                } else {
                    obj.reg_giou_loss
                };
                let got = v["expected"]["reg_loss"][0].as_f64().unwrap();
                // (serde_json's parser may be off by an ulp.)
                assert!(
                    (got - want).abs() <= 1e-12 * want.abs(),
                    "{what}: expected.reg_loss {got} vs {want}"
                );
            }
        }
        // global-ctr's denominators are the case's own totals.
        let v = run_json(&["check", &file, "--norm", "global-ctr", "--json"]);
        let sums = case.expected.as_ref().unwrap().sums.as_ref().unwrap();
        let n: f64 = sums.num_pos.iter().sum();
        let z: f64 = sums.ctr.iter().sum();
        assert_eq!(v["denominators"]["num_pos"].as_f64().unwrap(), n, "{name}");
        let got_z = v["denominators"]["ctr"].as_f64().unwrap();
        assert!(
            (got_z - z).abs() <= 1e-5 * z.max(1.0),
            "{name}: Z {got_z} vs {z}"
        );
    }
}

/// The default stays as it was: per-image lists and no `norm` key.
#[test]
fn check_default_norm_is_per_image() {
    let file = data("boxes_odd_b3_c7_100x150_m9.safetensors");
    let default = run_json(&["check", &file, "--json"]);
    let explicit = run_json(&["check", &file, "--norm", "per-image", "--json"]);
    assert!(default.get("norm").is_none(), "{default}");
    assert_eq!(default["gpu"]["cls_loss"].as_array().unwrap().len(), 3);
    assert_eq!(default["gpu"], explicit["gpu"]);
    assert_eq!(default["expected"], explicit["expected"]);
}

/// `grad --norm global-ctr` passes on every box case against the CPU reference
/// and `expected.grad_global_ctr.*` (IoU; GIoU's box head has no expected
/// gradients), and writes the objective and the sums beside the gradients.
#[test]
fn grad_global_ctr_passes_on_every_box_case() {
    for name in BOX_CASES {
        let file = data(&format!("{name}.safetensors"));
        for reg in ["iou", "giou"] {
            let what = format!("{name} --reg {reg}");
            let out_path = temp_path(&format!("grad-norm-{name}-{reg}"));
            let out_arg = out_path.display().to_string();
            let v = run_json(&[
                "grad",
                &file,
                "--out",
                &out_arg,
                "--norm",
                "global-ctr",
                "--reg",
                reg,
                "--json",
            ]);
            assert_eq!(v["norm"], "global-ctr", "{what}");
            assert_eq!(v["gpu"]["cls_loss"].as_array().unwrap().len(), 1, "{what}");
            let err = &v["max_grad_err"];
            for head in Head::ALL.map(Head::name) {
                assert!(
                    err["gpu_vs_cpu"][head].as_f64().unwrap() <= 1e-4,
                    "{what} {head}"
                );
                let exp = err["gpu_vs_expected"][head].as_f64();
                if reg == "giou" && head == "reg_preds" {
                    assert!(exp.is_none(), "{what} {head}: {v}");
                } else {
                    assert!(exp.unwrap() <= 1e-4, "{what} {head}: {v}");
                }
            }
            assert_eq!(v["ok"], serde_json::Value::Bool(true), "{what}");
            let bytes = std::fs::read(&out_path).unwrap();
            let _ = std::fs::remove_file(&out_path);
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            assert_eq!(st.tensor("objective.reg").unwrap().shape(), &[1], "{what}");
            assert!(st.tensor("sums.reg_w").is_ok(), "{what}");
            assert!(st.tensor("grad.cls_logits.0").is_ok(), "{what}");
        }
    }
    // The table names the mode too.
    let out_path = temp_path("grad-norm-table");
    let out = bin()
        .args(["grad", &data("boxes_odd_b3_c7_100x150_m9.safetensors")])
        .args([
            "--out",
            &out_path.display().to_string(),
            "--norm",
            "global-ctr",
        ])
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&out_path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", stderr(&out));
    assert!(stdout.contains("norm = global-ctr"), "{stdout}");
    assert!(stdout.contains("tolerance 1e-4: ok"), "{stdout}");
}

/// A wrong expected objective or gradient under `--norm` exits 1: the table says
/// FAILED, `--json` adds one CLI error line.
#[test]
fn norm_modes_fail_when_expected_values_disagree() {
    let golden = data("boxes_odd_b3_c7_100x150_m9.safetensors");
    let case = fcos_loss::casefile::read_case(Path::new(&golden)).unwrap();
    let variants: Vec<(&str, &str, fcos_loss::casefile::Case)> = vec![
        ("batch-cls", "batch", {
            let mut c = case.clone();
            c.expected
                .as_mut()
                .unwrap()
                .batch
                .as_mut()
                .unwrap()
                .cls_loss *= 1.01;
            c
        }),
        ("global-ctr-reg", "global-ctr", {
            let mut c = case.clone();
            c.expected
                .as_mut()
                .unwrap()
                .global_ctr
                .as_mut()
                .unwrap()
                .reg_loss *= 1.01;
            c
        }),
        ("global-ctr-sum", "global-ctr", {
            let mut c = case.clone();
            c.expected.as_mut().unwrap().sums.as_mut().unwrap().cls[0] *= 1.01;
            c
        }),
    ];
    for (tag, norm, c) in variants {
        let path = temp_path(&format!("wrong-{tag}"));
        fcos_loss::casefile::write_case(&path, &c).unwrap();
        let file = path.display().to_string();
        let table = bin()
            .args(["check", &file, "--norm", norm])
            .output()
            .unwrap();
        let json = bin()
            .args(["check", &file, "--norm", norm, "--json"])
            .output()
            .unwrap();
        // The default mode does not look at these values.
        let default = bin().args(["check", &file]).output().unwrap();
        let _ = std::fs::remove_file(&path);
        let stdout = String::from_utf8_lossy(&table.stdout);
        assert_eq!(table.status.code(), Some(1), "{tag}: {stdout}");
        assert!(stdout.contains("FAILED"), "{tag}: {stdout}");
        let line = one_error(&format!("{tag} --json"), &json, 1);
        assert!(line.contains("beyond tolerance"), "{tag}: {line}");
        assert!(default.status.success(), "{tag}: default mode");
    }
    // A wrong global-ctr gradient element.
    let mut c = case.clone();
    let g = c
        .expected
        .as_mut()
        .unwrap()
        .grad_global_ctr
        .as_mut()
        .unwrap();
    let level = &mut g[Head::ClsLogits][0];
    let i = (0..level.len())
        .max_by(|&a, &b| level[a].abs().total_cmp(&level[b].abs()))
        .unwrap();
    level[i] *= 1.01;
    let path = temp_path("wrong-grad-global-ctr");
    fcos_loss::casefile::write_case(&path, &c).unwrap();
    let out_path = temp_path("wrong-grad-global-ctr-out");
    let (file, out_arg) = (path.display().to_string(), out_path.display().to_string());
    let out = bin()
        .args([
            "grad",
            &file,
            "--out",
            &out_arg,
            "--norm",
            "global-ctr",
            "--json",
        ])
        .output()
        .unwrap();
    let ok = bin()
        .args(["grad", &file, "--out", &out_arg, "--norm", "batch"])
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(&out_path);
    let line = one_error("grad --norm global-ctr", &out, 1);
    assert!(line.contains("beyond tolerance"), "{line}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert!(
        v["max_grad_err"]["gpu_vs_expected"]["cls_logits"]
            .as_f64()
            .unwrap()
            > 1e-4
    );
    // Batch has no expected gradients: only the CPU reference, which agrees.
    assert!(ok.status.success(), "{}", stderr(&ok));
}

/// `bench --norms`: the per-mode keys beside the existing ones (which stay), one
/// entry per mode, every mode within tolerance of the CPU reference.
#[test]
fn bench_norms_json_has_a_row_per_mode() {
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
        "--norms",
        "--json",
    ]);
    for key in ["kernel_ms", "backward_kernel_ms", "checks_kernel_cost"] {
        assert!(v[key].as_f64().is_some_and(|x| x > 0.0), "{key}: {v}");
    }
    let modes = ["per-image", "batch", "global-ctr", "global-ctr-device"];
    for key in [
        "kernel_ms_by_norm",
        "kernel_min_ms_by_norm",
        "kernel_over_per_image_by_norm",
        "backward_kernel_ms_by_norm",
        "backward_kernel_min_ms_by_norm",
        "backward_over_per_image_by_norm",
    ] {
        let m = v[key].as_object().unwrap_or_else(|| panic!("{key}: {v}"));
        assert_eq!(m.len(), modes.len(), "{key}: {v}");
        for mode in modes {
            let x = m[mode].as_f64().unwrap();
            assert!(x.is_finite() && x > 0.0, "{key}.{mode}: {v}");
        }
    }
    assert_eq!(v["kernel_over_per_image_by_norm"]["per-image"], 1.0);
    for mode in modes {
        assert!(
            v["max_rel_diff_by_norm"][mode].as_f64().unwrap() <= 1e-4,
            "{mode}: {v}"
        );
    }
    // Without --norms the keys are absent.
    let plain = run_json(&[
        "bench",
        "--preset",
        "voc",
        "--batch",
        "1",
        "--image",
        "64x64",
        "--reps",
        "1",
        "--cpu-reps",
        "0",
        "--json",
    ]);
    assert!(plain.get("kernel_ms_by_norm").is_none(), "{plain}");
}

/// `targets` assigns every golden box case's targets exactly as the file holds
/// them and writes them in the §5 shapes.
#[test]
fn targets_reproduce_every_box_case() {
    for name in BOX_CASES {
        let out = temp_path("targets");
        let v = run_json(&[
            "targets",
            &data(&format!("{name}.safetensors")),
            "--out",
            out.to_str().unwrap(),
            "--json",
        ]);
        assert_eq!(v["ok"], true, "{name}: {v}");
        assert_eq!(v["differing_cls"], 0, "{name}");
        assert_eq!(v["differing_reg"], 0, "{name}");
        assert!(
            v["max_cnt_rel_err"].as_f64().unwrap() <= 1e-6,
            "{name}: {v}"
        );
        let case = fcos_loss::casefile::read_case(Path::new(&data(&format!("{name}.safetensors"))))
            .unwrap();
        let (b, p) = (case.batch.batch, case.batch.levels.positions());
        let bytes = std::fs::read(&out).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("cls_targets").unwrap().shape(), &[b, p, 1]);
        assert_eq!(st.tensor("cnt_targets").unwrap().shape(), &[b, p, 1]);
        assert_eq!(st.tensor("reg_targets").unwrap().shape(), &[b, p, 4]);
        let cls: Vec<f32> = bytemuck::pod_collect_to_vec(st.tensor("cls_targets").unwrap().data());
        assert_eq!(cls, case.batch.cls_targets, "{name}: written class targets");
    }
}

/// A file whose targets disagree with its boxes: `targets` counts the
/// differences and exits 1; a file without boxes is an error (exit 2).
#[test]
fn targets_fail_on_differences_and_need_boxes() {
    let name = BOX_CASES[0];
    let mut ts = golden_tensors(&format!("{name}.safetensors"));
    let st_bytes = std::fs::read(data(&format!("{name}.safetensors"))).unwrap();
    let st = safetensors::SafeTensors::deserialize(&st_bytes).unwrap();
    for n in ["gt_boxes", "gt_classes"] {
        let t = st.tensor(n).unwrap();
        ts.push((
            n.to_string(),
            t.shape().to_vec(),
            t.data().to_vec(),
            t.dtype(),
        ));
    }
    let ts = with(&ts, "cls_targets", |t| {
        let mut v: Vec<f32> = bytemuck::pod_collect_to_vec(&t.2);
        let i = v.iter().position(|&c| c > 0.0).unwrap();
        v[i] += 1.0;
        t.2 = bytemuck::cast_slice(&v).to_vec();
    });
    let path = write_tensors("targets_off", &ts);
    let out = temp_path("targets_off_out");
    let run = bin()
        .args(["targets", &path, "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&run.stdout);
    assert_eq!(run.status.code(), Some(1), "{text}{}", stderr(&run));
    assert!(text.contains("1 class targets differ"), "{text}");
    let run = bin()
        .args([
            "targets",
            &data("voc_b2_c20_512x512.safetensors"),
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let e = one_error("targets without boxes", &run, 2);
    assert!(e.contains("gt_boxes"), "{e}");
    let run = bin()
        .args([
            "check",
            &data("voc_b2_c20_512x512.safetensors"),
            "--from-boxes",
        ])
        .output()
        .unwrap();
    let e = one_error("check --from-boxes without boxes", &run, 2);
    assert!(e.contains("gt_boxes"), "{e}");
}

/// A file with boxes and no targets: `targets` writes them (nothing to compare
/// with), `check --from-boxes` runs, and `check` without it says to add it.
#[test]
fn boxes_only_files_take_targets_from_the_boxes() {
    let name = format!("{}.safetensors", BOX_CASES[1]);
    let st_bytes = std::fs::read(data(&name)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&st_bytes).unwrap();
    let mut ts: Vec<Tensor> = golden_tensors(&name)
        .into_iter()
        .filter(|t| !t.0.ends_with("_targets"))
        .collect();
    for n in ["gt_boxes", "gt_classes"] {
        let t = st.tensor(n).unwrap();
        ts.push((
            n.to_string(),
            t.shape().to_vec(),
            t.data().to_vec(),
            t.dtype(),
        ));
    }
    let path = write_tensors("boxes_only", &ts);
    let out = temp_path("boxes_only_targets");
    let v = run_json(&["targets", &path, "--out", out.to_str().unwrap(), "--json"]);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["compared"], false, "{v}");
    let written = fcos_loss::casefile::read_case(Path::new(&data(&name))).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    let got = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let cls: Vec<f32> = bytemuck::pod_collect_to_vec(got.tensor("cls_targets").unwrap().data());
    assert_eq!(cls, written.batch.cls_targets, "the targets the boxes give");
    let v = run_json(&["check", &path, "--from-boxes", "--json"]);
    assert_eq!(v["ok"], true, "{v}");
    let run = bin().args(["check", &path]).output().unwrap();
    let e = one_error("check of a boxes-only file", &run, 2);
    assert!(e.contains("--from-boxes"), "{e}");
}

/// `check --from-boxes` and `grad --from-boxes` pass on every box case, IoU and
/// GIoU, in every normalisation, with the same JSON keys as without.
#[test]
fn check_and_grad_from_boxes_pass_on_every_box_case() {
    for name in BOX_CASES {
        for reg in ["iou", "giou"] {
            for norm in ["per-image", "batch", "global-ctr"] {
                let args = [
                    "check",
                    &data(&format!("{name}.safetensors")),
                    "--from-boxes",
                    "--reg",
                    reg,
                    "--norm",
                    norm,
                    "--json",
                ];
                let v = run_json(&args);
                assert_eq!(v["ok"], true, "{args:?}: {v}");
                assert_eq!(v["from_boxes"], true);
                let plain = run_json(&[
                    "check",
                    &data(&format!("{name}.safetensors")),
                    "--reg",
                    reg,
                    "--norm",
                    norm,
                    "--json",
                ]);
                let keys = |v: &serde_json::Value| {
                    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
                    k.sort();
                    k
                };
                assert_eq!(keys(&v), keys(&plain), "{args:?}");
            }
        }
        let out = temp_path("grad_boxes");
        let v = run_json(&[
            "grad",
            &data(&format!("{name}.safetensors")),
            "--from-boxes",
            "--out",
            out.to_str().unwrap(),
            "--json",
        ]);
        assert_eq!(v["ok"], true, "{name}: {v}");
        let v = run_json(&[
            "grad",
            &data(&format!("{name}.safetensors")),
            "--from-boxes",
            "--norm",
            "global-ctr",
            "--out",
            out.to_str().unwrap(),
            "--json",
        ]);
        assert_eq!(v["ok"], true, "{name} global-ctr: {v}");
    }
}

/// `shaders` writes every variant and a manifest that names each file, entry
/// point, override constants, features and bindings; each source parses and
/// validates with naga as wgpu would take it.
#[test]
fn shaders_exports_every_variant_with_a_manifest() {
    let dir = temp_path("shaders");
    let out = bin()
        .args(["shaders", "--out", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let variants = manifest["variants"].as_array().unwrap();
    let want = fcos_loss::shader_variants(fcos_loss::WORKGROUP_SIZE).unwrap();
    assert_eq!(variants.len(), want.len());
    assert!(variants.len() >= 40, "{} variants", variants.len());
    let mut subgroup_variants = 0;
    for (v, w) in variants.iter().zip(&want) {
        let source = std::fs::read_to_string(dir.join(v["file"].as_str().unwrap())).unwrap();
        assert_eq!(source, w.source, "{}", w.stem);
        assert_eq!(v["entry_point"], w.entry_point.as_str());
        for (k, x) in &w.constants {
            assert_eq!(v["constants"][k].as_f64(), Some(*x), "{} {k}", w.stem);
        }
        let module = naga::front::wgsl::parse_str(&source)
            .unwrap_or_else(|e| panic!("{}: {}", w.stem, e.emit_to_string(&source)));
        assert!(module.entry_points.iter().any(|e| e.name == w.entry_point));
        let webgpu = std::fs::read_to_string(dir.join(v["webgpu_file"].as_str().unwrap())).unwrap();
        if w.features.iter().any(|f| f == "subgroups") {
            subgroup_variants += 1;
            assert_eq!(webgpu, format!("enable subgroups;\n{source}"), "{}", w.stem);
        } else {
            assert_eq!(webgpu, source, "{}", w.stem);
        }
    }
    assert!(subgroup_variants > 0);
    let run = bin()
        .args([
            "shaders",
            "--out",
            dir.to_str().unwrap(),
            "--workgroup-size",
            "100",
        ])
        .output()
        .unwrap();
    let e = one_error("shaders with WG 100", &run, 2);
    assert!(e.contains("power of two"), "{e}");
}

/// `capture` writes a description another WebGPU can replay from alone: every
/// pipeline's WebGPU source (the exported variant's), every buffer's contents,
/// commands within bounds, and result ranges whose native bytes, decoded by the
/// recipe in the JSON, give the case's expected losses and gradients.
#[test]
fn capture_writes_a_replayable_description() {
    let dir = temp_path("capture");
    let out = bin()
        .args([
            "capture",
            &data("voc_b2_c20_512x512.safetensors"),
            "--out",
            dir.to_str().unwrap(),
            "--backward",
            "--reg",
            "giou",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let read = |p: &str| std::fs::read(dir.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    let c: serde_json::Value = serde_json::from_slice(&read("capture.json")).unwrap();
    assert_eq!(c["format"], "fcos-loss capture 1");
    assert_eq!(
        (c["pass"].as_str(), c["reg"].as_str()),
        (Some("backward"), Some("giou"))
    );
    let variants = fcos_loss::shader_variants(fcos_loss::WORKGROUP_SIZE).unwrap();
    let pipelines = c["pipelines"].as_array().unwrap();
    assert!(pipelines.len() >= 4, "count, normalize, fused, finalize");
    for p in pipelines {
        let stem = p["stem"].as_str().unwrap();
        let v = variants.iter().find(|v| v.stem == stem).expect(stem);
        let source = String::from_utf8(read(p["file"].as_str().unwrap())).unwrap();
        assert_eq!(source, v.webgpu_source(), "{stem}");
        assert_eq!(p["entry_point"], v.entry_point.as_str());
    }
    let buffers = c["buffers"].as_array().unwrap();
    let sizes: Vec<u64> = buffers
        .iter()
        .map(|b| b["size"].as_u64().unwrap())
        .collect();
    for b in buffers {
        let bytes = read(b["file"].as_str().unwrap());
        assert_eq!(
            bytes.len() as u64,
            b["size"].as_u64().unwrap(),
            "{}",
            b["label"]
        );
    }
    let params = &buffers[c["params_buffer"].as_u64().unwrap() as usize];
    assert_eq!(params["usage"], "uniform");
    for cmd in c["commands"].as_array().unwrap() {
        let p = &pipelines[cmd["pipeline"].as_u64().unwrap() as usize];
        for b in cmd["bindings"].as_array().unwrap() {
            let buf = b["buffer"].as_u64().unwrap() as usize;
            let end = b["offset"].as_u64().unwrap() + b["size"].as_u64().unwrap();
            assert!(end <= sizes[buf], "{cmd}");
            assert!(!p["bindings"][b["binding"].as_u64().unwrap() as usize].is_null());
        }
    }
    // The recipe: per image, each sum over max(n, 1) (docs/contract.md §8).
    let results = &c["results"];
    let sums = read(results["image_sums"]["native_file"].as_str().unwrap());
    let stride = results["image_sums_stride"].as_u64().unwrap() as usize;
    let field = |b: usize, name: &str| {
        let at = results["image_sums_fields"][name][0].as_u64().unwrap() as usize;
        let w = u32::from_le_bytes(sums[b * stride + at..][..4].try_into().unwrap());
        match results["image_sums_fields"][name][1].as_str().unwrap() {
            "u32" => f64::from(w),
            _ => f64::from(f32::from_bits(w)),
        }
    };
    let expected = &c["expected"];
    for b in 0..2 {
        let n = field(b, "num_pos");
        assert_eq!(n, expected["num_pos"][b].as_f64().unwrap());
        assert_eq!(field(b, "flags"), 0.0);
        for k in ["cls", "cnt", "reg"] {
            let got = field(b, k) / n.max(1.0);
            let want = expected[k][b].as_f64().unwrap();
            assert!(
                (got - want).abs() <= 1e-4 * want.abs().max(0.1),
                "{k}[{b}]: {got} vs {want}"
            );
        }
    }
    let grads = results["gradients"].as_object().unwrap();
    assert_eq!(grads.len(), 3);
    for (h, r) in grads {
        let got: Vec<f32> = bytemuck::pod_collect_to_vec(&read(r["native_file"].as_str().unwrap()));
        let want: Vec<f32> =
            bytemuck::pod_collect_to_vec(&read(r["expected_file"].as_str().unwrap()));
        assert_eq!(got.len(), want.len(), "{h}");
        let err = fcos_loss::max_head_error(&[got], &[want]);
        assert!(err <= 1e-4, "{h}: {err}");
    }
    // Errors: boxes the file does not have, a workgroup size WGSL cannot take.
    let run = bin()
        .args(["capture", &data("voc_b2_c20_512x512.safetensors"), "--out"])
        .arg(&dir)
        .arg("--from-boxes")
        .output()
        .unwrap();
    let e = one_error("capture --from-boxes without boxes", &run, 2);
    assert!(e.contains("gt_boxes"), "{e}");
    let run = bin()
        .args(["capture", &data("single_b1_c1_64x64.safetensors"), "--out"])
        .arg(&dir)
        .args(["--workgroup-size", "100"])
        .output()
        .unwrap();
    one_error("capture with WG 100", &run, 2);
    std::fs::remove_dir_all(&dir).ok();
}

/// A reader that closes the pipe early ends the command by SIGPIPE, without a
/// panic message (as other Unix tools end).
#[cfg(unix)]
#[test]
fn a_closed_stdout_ends_quietly() {
    use std::process::Stdio;
    let mut child = bin()
        .args(["check", &data("voc_b2_c20_512x512.safetensors"), "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(!err.contains("panicked"), "{err}");
    assert!(cli_errors(&err).is_empty(), "{err}");
    assert!(
        !out.status.success(),
        "a write to a closed pipe cannot succeed"
    );
}
