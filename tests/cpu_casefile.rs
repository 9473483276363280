//! Case files (docs/contract.md §5): the golden files, round trips and the error messages.
#![cfg(feature = "casefile")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fcos_loss::casefile::{parse_case, read_case, write_case, write_tensors, Case};
use fcos_loss::FcosError;
use safetensors::tensor::{Dtype, TensorView};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(format!("{name}.safetensors"))
}

/// A fresh, unique temporary directory (removed by the test when done).
fn temp_dir(tag: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "fcos_loss_casefile_{tag}_{}_{}_{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Checks that reading failed, the message is one line, and it mentions every `needle`.
fn err_msg(r: Result<Case, FcosError>, needles: &[&str]) -> FcosError {
    let e = match r {
        Ok(_) => panic!("expected an error mentioning {needles:?}, got Ok"),
        Err(e) => e,
    };
    let msg = e.to_string();
    eprintln!("{msg}");
    assert!(!msg.contains('\n'), "message is not one line: {msg:?}");
    for n in needles {
        assert!(msg.contains(n), "message {msg:?} does not mention {n:?}");
    }
    e
}

// ---------------------------------------------------------------------------
// Golden files

fn check_golden(name: &str, b: usize, c: usize, shapes: &[(u32, u32)], p: usize) {
    let case = read_case(&data(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let batch = &case.batch;
    assert_eq!(batch.batch, b, "{name}: B");
    assert_eq!(batch.classes, c, "{name}: C");
    assert_eq!(batch.levels.shapes(), shapes, "{name}: level shapes");
    assert_eq!(batch.levels.positions(), p, "{name}: P");
    batch.inputs().check_shapes(&batch.levels, c).unwrap();
    assert_eq!(batch.cls_targets.len(), b * p);
    assert_eq!(batch.cnt_targets.len(), b * p);
    assert_eq!(batch.reg_targets.len(), b * p * 4);
    // Class targets are class indices.
    assert!(batch
        .cls_targets
        .iter()
        .all(|&t| t >= 0.0 && t <= c as f32 && t.fract() == 0.0));

    let e = case
        .expected
        .as_ref()
        .expect("golden files carry expected values");
    for v in [&e.cls_loss, &e.cnt_loss, &e.reg_loss] {
        assert_eq!(v.len(), b);
        assert!(v.iter().all(|x| x.is_finite() && *x >= 0.0));
    }
    assert_eq!(e.reg_loss_giou.as_ref().map(Vec::len), Some(b));
    let g = e.grad.as_ref().expect("golden files carry gradients");
    let inputs = batch.inputs();
    for (h, levels) in g.iter() {
        assert_eq!(levels.len(), shapes.len(), "{name}: grad {h} levels");
        for (l, v) in levels.iter().enumerate() {
            assert_eq!(v.len(), inputs.head(h)[l].len(), "{name}: grad {h}.{l}");
        }
    }
    let gg = e
        .grad_giou_reg
        .as_ref()
        .expect("golden files carry GIoU gradients");
    assert_eq!(gg.len(), shapes.len());
    for (g, r) in gg.iter().zip(&batch.reg_preds) {
        assert_eq!(g.len(), r.len());
    }

    // parse_case on the bytes gives the same case.
    let bytes = std::fs::read(data(name)).unwrap();
    assert_eq!(parse_case(&bytes).unwrap(), case);
}

#[test]
fn golden_voc() {
    check_golden(
        "voc_b2_c20_512x512",
        2,
        20,
        &[(64, 64), (32, 32), (16, 16), (8, 8), (4, 4)],
        5456,
    );
}

#[test]
fn golden_odd() {
    check_golden(
        "odd_b3_c7_100x150",
        3,
        7,
        &[(13, 19), (7, 10), (4, 5), (2, 3), (1, 2)],
        345,
    );
    // Image 1 has no positives, image 2 is positive everywhere (docs/contract.md §5).
    let case = read_case(&data("odd_b3_c7_100x150")).unwrap();
    let cnt = &case.batch.cnt_targets;
    assert!(cnt[345..690].iter().all(|&t| t <= -1.0));
    assert!(cnt[690..].iter().all(|&t| t > -1.0));
}

#[test]
fn golden_single() {
    check_golden(
        "single_b1_c1_64x64",
        1,
        1,
        &[(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)],
        86,
    );
}

#[test]
fn round_trip_golden_files() {
    let dir = temp_dir("roundtrip");
    for name in [
        "odd_b3_c7_100x150",
        "single_b1_c1_64x64",
        "voc_b2_c20_512x512",
        "boxes_odd_b3_c7_100x150_m9",
    ] {
        let case = read_case(&data(name)).unwrap();
        assert_eq!(
            case.boxes.is_some(),
            name.starts_with("boxes"),
            "{name}: gt_boxes"
        );
        let out = dir.join(format!("{name}.safetensors"));
        write_case(&out, &case).unwrap();
        let back = read_case(&out).unwrap();
        assert_eq!(back, case, "{name}: write_case -> read_case");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// A case with boxes and no targets is written without them and read back as
/// it was: background targets, `targets_given` false.
#[test]
fn round_trip_boxes_without_targets() {
    let dir = temp_dir("boxes_only");
    let mut case = read_case(&data("boxes_odd_b3_c7_100x150_m9")).unwrap();
    let b = &mut case.batch;
    let t = fcos_loss::Targets::background(b.batch, b.levels.positions());
    (b.cls_targets, b.cnt_targets, b.reg_targets) = (t.cls_targets, t.cnt_targets, t.reg_targets);
    case.targets_given = false;
    case.expected = None;
    let out = dir.join("case.safetensors");
    write_case(&out, &case).unwrap();
    let back = read_case(&out).unwrap();
    assert!(!back.targets_given);
    assert_eq!(back, case);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn round_trip_without_expected() {
    let dir = temp_dir("noexp");
    let mut case = read_case(&data("single_b1_c1_64x64")).unwrap();
    case.expected = None;
    let out = dir.join("case.safetensors");
    write_case(&out, &case).unwrap();
    let back = read_case(&out).unwrap();
    assert!(back.expected.is_none());
    assert_eq!(back, case);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn write_case_rejects_inconsistent_case() {
    let dir = temp_dir("badwrite");
    let mut case = read_case(&data("single_b1_c1_64x64")).unwrap();
    case.batch.reg_targets.pop();
    let out = dir.join("bad.safetensors");
    let msg = write_case(&out, &case).unwrap_err().to_string();
    assert!(msg.contains("reg_targets"), "{msg}");
    assert!(!out.exists(), "nothing is written for an inconsistent case");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn write_tensors_writes_f32() {
    let dir = temp_dir("tensors");
    let out = dir.join("grads.safetensors");
    let t = vec![
        (
            "a".to_string(),
            vec![2, 3],
            vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        ),
        ("b.0".to_string(), vec![1], vec![-0.5]),
    ];
    write_tensors(&out, &t).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let a = st.tensor("a").unwrap();
    assert_eq!(a.dtype(), Dtype::F32);
    assert_eq!(a.shape(), &[2, 3]);
    let vals: Vec<f32> = a
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(vals, t[0].2);

    let bad = vec![("x".to_string(), vec![2, 2], vec![1.0; 3])];
    let msg = write_tensors(&dir.join("bad.safetensors"), &bad)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("'x'") && msg.contains("[2, 2]"), "{msg}");
    let dup = vec![
        ("x".to_string(), vec![1], vec![1.0]),
        ("x".to_string(), vec![1], vec![2.0]),
    ];
    let msg = write_tensors(&dir.join("dup.safetensors"), &dup)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("'x'") && msg.contains("twice"), "{msg}");
    std::fs::remove_dir_all(&dir).ok();
}

// ---------------------------------------------------------------------------
// Hand-built files: B = 2, C = 3, levels (2, 3) and (1, 2), P = 8.

const B: usize = 2;
const C: usize = 3;
const P: usize = 8;
const SHAPES: [(usize, usize); 2] = [(2, 3), (1, 2)];

type Raw = BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>;

fn f32s(n: usize, f: impl Fn(usize) -> f32) -> Vec<u8> {
    (0..n).flat_map(|i| f(i).to_le_bytes()).collect()
}

/// A valid small case as raw tensors, all F32.
fn small() -> Raw {
    let mut m = Raw::new();
    let mut put = |name: String, shape: Vec<usize>, f: &dyn Fn(usize) -> f32| {
        let n = shape.iter().product();
        m.insert(name, (Dtype::F32, shape, f32s(n, f)));
    };
    for (l, &(h, w)) in SHAPES.iter().enumerate() {
        put(format!("cls_logits.{l}"), vec![B, C, h, w], &|i| {
            i as f32 * 0.25 - 1.0
        });
        put(format!("cnt_logits.{l}"), vec![B, 1, h, w], &|i| {
            i as f32 * 0.5
        });
        put(format!("reg_preds.{l}"), vec![B, 4, h, w], &|i| {
            1.0 + i as f32
        });
    }
    put("cls_targets".into(), vec![B, P, 1], &|i| {
        (i % (C + 1)) as f32
    });
    put("cnt_targets".into(), vec![B, P, 1], &|i| {
        if i % 3 == 0 {
            0.5
        } else {
            -1.0
        }
    });
    put("reg_targets".into(), vec![B, P, 4], &|i| 2.0 + i as f32);
    m
}

fn serialize(raw: &Raw) -> Vec<u8> {
    let views: Vec<(String, TensorView<'_>)> = raw
        .iter()
        .map(|(k, (dt, s, d))| (k.clone(), TensorView::new(*dt, s.clone(), d).unwrap()))
        .collect();
    safetensors::tensor::serialize(views, None).unwrap()
}

fn set(raw: &mut Raw, name: &str, dtype: Dtype, shape: Vec<usize>, bytes: Vec<u8>) {
    raw.insert(name.to_string(), (dtype, shape, bytes));
}

#[test]
fn small_case_reads() {
    let case = parse_case(&serialize(&small())).unwrap();
    assert_eq!(case.batch.batch, B);
    assert_eq!(case.batch.classes, C);
    assert_eq!(case.batch.levels.shapes(), &[(2, 3), (1, 2)]);
    assert_eq!(case.batch.cls_targets[..4], [0.0, 1.0, 2.0, 3.0]);
    assert!(case.expected.is_none());
}

#[test]
fn truncated_file_names_the_path() {
    let dir = temp_dir("trunc");
    let bytes = std::fs::read(data("single_b1_c1_64x64")).unwrap();
    for cut in [0, 4, 8, 100, bytes.len() / 2, bytes.len() - 1] {
        let path = dir.join(format!("cut{cut}.safetensors"));
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let e = err_msg(read_case(&path), &[&path.display().to_string()]);
        assert!(matches!(e, FcosError::File(_)), "{e:?}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn garbage_bytes_name_the_path() {
    let dir = temp_dir("garbage");
    let path = dir.join("garbage.safetensors");
    std::fs::write(
        &path,
        b"this is not a safetensors file at all, just some text\n",
    )
    .unwrap();
    let e = err_msg(
        read_case(&path),
        &[&path.display().to_string(), "safetensors"],
    );
    assert!(matches!(e, FcosError::File(_)));
    // A plausible header length but a non-JSON header.
    let mut g = 16u64.to_le_bytes().to_vec();
    g.extend_from_slice(&[0xff; 16]);
    std::fs::write(&path, &g).unwrap();
    err_msg(read_case(&path), &[&path.display().to_string()]);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn directory_and_missing_file_name_the_path() {
    let dir = temp_dir("dir");
    let e = err_msg(read_case(&dir), &[&dir.display().to_string(), "directory"]);
    assert!(matches!(e, FcosError::File(_)));
    let missing = dir.join("nope.safetensors");
    let e = err_msg(read_case(&missing), &[&missing.display().to_string()]);
    assert!(matches!(e, FcosError::File(_)));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn missing_reg_targets_is_named() {
    let mut raw = small();
    raw.remove("reg_targets");
    err_msg(
        parse_case(&serialize(&raw)),
        &["'reg_targets'", "missing", "[2, 8, 4]"],
    );
}

#[test]
fn missing_level_tensors_are_named() {
    let mut raw = small();
    raw.remove("cnt_logits.1");
    err_msg(
        parse_case(&serialize(&raw)),
        &["'cnt_logits.1'", "missing", "[2, 1, 1, 2]"],
    );
    let mut raw = small();
    raw.remove("cls_logits.0");
    raw.remove("cls_logits.1");
    err_msg(parse_case(&serialize(&raw)), &["'cls_logits.0'", "missing"]);
}

#[test]
fn level_gap_is_an_error() {
    let mut raw = small();
    let t = raw["cls_logits.1"].clone();
    raw.insert("cls_logits.7".into(), t);
    err_msg(
        parse_case(&serialize(&raw)),
        &["'cls_logits.7'", "2 levels"],
    );
    let mut raw = small();
    let t = raw["reg_preds.1"].clone();
    raw.insert("reg_preds.2".into(), t);
    err_msg(parse_case(&serialize(&raw)), &["'reg_preds.2'"]);
}

#[test]
fn wrong_rank_cls_logits_is_named() {
    let mut raw = small();
    set(
        &mut raw,
        "cls_logits.0",
        Dtype::F32,
        vec![B, C, 6],
        f32s(B * C * 6, |_| 0.0),
    );
    let e = err_msg(
        parse_case(&serialize(&raw)),
        &["'cls_logits.0'", "rank 4", "[2, 3, 6]", "rank 3"],
    );
    assert!(matches!(e, FcosError::Shape { .. }));
}

#[test]
fn inconsistent_levels_are_named() {
    // C differs on level 1.
    let mut raw = small();
    set(
        &mut raw,
        "cls_logits.1",
        Dtype::F32,
        vec![B, 4, 1, 2],
        f32s(B * 8, |_| 0.0),
    );
    err_msg(
        parse_case(&serialize(&raw)),
        &["'cls_logits.1'", "[2, 3, H, W]", "[2, 4, 1, 2]"],
    );
    // cnt_logits with the wrong H.
    let mut raw = small();
    set(
        &mut raw,
        "cnt_logits.0",
        Dtype::F32,
        vec![B, 1, 3, 3],
        f32s(B * 9, |_| 0.0),
    );
    err_msg(
        parse_case(&serialize(&raw)),
        &["'cnt_logits.0'", "[2, 1, 2, 3]", "[2, 1, 3, 3]"],
    );
    // reg_preds with 3 channels.
    let mut raw = small();
    set(
        &mut raw,
        "reg_preds.1",
        Dtype::F32,
        vec![B, 3, 1, 2],
        f32s(B * 6, |_| 0.0),
    );
    err_msg(
        parse_case(&serialize(&raw)),
        &["'reg_preds.1'", "[2, 4, 1, 2]", "[2, 3, 1, 2]"],
    );
}

#[test]
fn wrong_length_cls_targets_is_named() {
    let mut raw = small();
    set(
        &mut raw,
        "cls_targets",
        Dtype::F32,
        vec![B, P - 1, 1],
        f32s(B * (P - 1), |_| 0.0),
    );
    let e = err_msg(
        parse_case(&serialize(&raw)),
        &["'cls_targets'", "[2, 8, 1]", "[2, 7, 1]"],
    );
    assert!(matches!(e, FcosError::Shape { .. }));
}

#[test]
fn two_dimensional_targets_are_accepted() {
    let mut raw = small();
    let want = parse_case(&serialize(&raw)).unwrap();
    for name in ["cls_targets", "cnt_targets"] {
        let (dt, _, bytes) = raw[name].clone();
        set(&mut raw, name, dt, vec![B, P], bytes);
    }
    assert_eq!(parse_case(&serialize(&raw)).unwrap(), want);
    // But not for reg_targets.
    let (dt, _, bytes) = raw["reg_targets"].clone();
    set(&mut raw, "reg_targets", dt, vec![B, P * 4], bytes);
    err_msg(
        parse_case(&serialize(&raw)),
        &["'reg_targets'", "[2, 8, 4]", "[2, 32]"],
    );
}

#[test]
fn bool_and_integer_dtypes_rejected_for_float_tensors() {
    let mut raw = small();
    set(
        &mut raw,
        "cnt_targets",
        Dtype::BOOL,
        vec![B, P, 1],
        vec![1u8; B * P],
    );
    err_msg(
        parse_case(&serialize(&raw)),
        &["'cnt_targets'", "BOOL", "float dtype"],
    );
    let mut raw = small();
    set(
        &mut raw,
        "reg_preds.0",
        Dtype::U8,
        vec![B, 4, 2, 3],
        vec![1u8; B * 24],
    );
    err_msg(
        parse_case(&serialize(&raw)),
        &["'reg_preds.0'", "U8", "float dtype"],
    );
    let mut raw = small();
    set(
        &mut raw,
        "cls_targets",
        Dtype::BOOL,
        vec![B, P, 1],
        vec![0u8; B * P],
    );
    err_msg(parse_case(&serialize(&raw)), &["'cls_targets'", "BOOL"]);
}

#[test]
fn f16_bf16_f64_inputs_and_integer_class_targets_are_accepted() {
    let base = small();
    let want = parse_case(&serialize(&base)).unwrap();
    let mut raw = base.clone();
    // Values in `small()` are exact in f16 and bf16 (quarters, small integers).
    let conv = |bytes: &[u8], to: Dtype| -> Vec<u8> {
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .flat_map(|x| match to {
                Dtype::F16 => half::f16::from_f32(x).to_le_bytes().to_vec(),
                Dtype::BF16 => half::bf16::from_f32(x).to_le_bytes().to_vec(),
                Dtype::F64 => (x as f64).to_le_bytes().to_vec(),
                Dtype::I64 => (x as i64).to_le_bytes().to_vec(),
                Dtype::U8 => vec![x as u8],
                _ => unreachable!(),
            })
            .collect()
    };
    for (name, dt) in [
        ("cls_logits.0", Dtype::F16),
        ("cls_logits.1", Dtype::BF16),
        ("cnt_logits.0", Dtype::F64),
        ("reg_preds.1", Dtype::F16),
        ("cnt_targets", Dtype::F64),
        ("reg_targets", Dtype::BF16),
        ("cls_targets", Dtype::I64),
    ] {
        let (_, shape, bytes) = raw[name].clone();
        set(&mut raw, name, dt, shape, conv(&bytes, dt));
    }
    assert_eq!(parse_case(&serialize(&raw)).unwrap(), want);
    // Other integer widths for class targets too.
    let (_, shape, bytes) = base["cls_targets"].clone();
    set(
        &mut raw,
        "cls_targets",
        Dtype::U8,
        shape,
        conv(&bytes, Dtype::U8),
    );
    assert_eq!(parse_case(&serialize(&raw)).unwrap(), want);
}

#[test]
fn expected_values_partial_is_an_error() {
    let mut raw = small();
    set(
        &mut raw,
        "expected.cls_loss",
        Dtype::F32,
        vec![B],
        f32s(B, |_| 1.0),
    );
    set(
        &mut raw,
        "expected.reg_loss",
        Dtype::F64,
        vec![B],
        vec![0u8; 16],
    );
    err_msg(
        parse_case(&serialize(&raw)),
        &["'expected.cnt_loss'", "missing", "[2]"],
    );
    set(
        &mut raw,
        "expected.cnt_loss",
        Dtype::F32,
        vec![B],
        f32s(B, |i| i as f32),
    );
    let case = parse_case(&serialize(&raw)).unwrap();
    let e = case.expected.unwrap();
    assert_eq!(e.cls_loss, vec![1.0, 1.0]);
    assert_eq!(e.cnt_loss, vec![0.0, 1.0]);
    assert_eq!(e.reg_loss, vec![0.0, 0.0]);
    assert!(e.grad.is_none() && e.grad_giou_reg.is_none() && e.reg_loss_giou.is_none());

    // Wrong loss length.
    set(
        &mut raw,
        "expected.reg_loss_giou",
        Dtype::F32,
        vec![3],
        f32s(3, |_| 1.0),
    );
    err_msg(
        parse_case(&serialize(&raw)),
        &["'expected.reg_loss_giou'", "[2]", "[3]"],
    );
    raw.remove("expected.reg_loss_giou");

    // Gradients: level 0 of cls present means all must be.
    set(
        &mut raw,
        "expected.grad.cls_logits.0",
        Dtype::F32,
        vec![B, C, 2, 3],
        f32s(B * C * 6, |_| 0.0),
    );
    err_msg(
        parse_case(&serialize(&raw)),
        &["'expected.grad.cls_logits.1'", "missing"],
    );
    // Wrong gradient shape.
    set(
        &mut raw,
        "expected.grad_giou.reg_preds.0",
        Dtype::F32,
        vec![B, 4, 3, 2],
        f32s(B * 24, |_| 0.0),
    );
    set(
        &mut raw,
        "expected.grad_giou.reg_preds.1",
        Dtype::F32,
        vec![B, 4, 1, 2],
        f32s(B * 8, |_| 0.0),
    );
    raw.remove("expected.grad.cls_logits.0");
    err_msg(
        parse_case(&serialize(&raw)),
        &[
            "'expected.grad_giou.reg_preds.0'",
            "[2, 4, 2, 3] like reg_preds.0",
            "[2, 4, 3, 2]",
        ],
    );
}

#[test]
fn no_panic_on_corrupted_bytes() {
    let bytes = serialize(&small());
    // Every truncation.
    for cut in 0..bytes.len() {
        assert!(parse_case(&bytes[..cut]).is_err());
    }
    // Every single-byte corruption of the header and some of the data.
    let header_end = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    for i in 0..header_end.min(bytes.len()) {
        for v in [0u8, b'9', b'"', b'}', 0xff] {
            let mut b = bytes.clone();
            b[i] = v;
            let _ = parse_case(&b);
        }
    }
    // Huge header lengths and data offsets.
    let mut b = bytes.clone();
    b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(parse_case(&b).is_err());
    let h = format!(
        "{{\"a\":{{\"dtype\":\"F32\",\"shape\":[{}],\"data_offsets\":[0,{}]}},\"b\":{{\"dtype\":\"F32\",\"shape\":[{}],\"data_offsets\":[{},{}]}}}}",
        usize::MAX / 8,
        usize::MAX / 8 * 4,
        usize::MAX / 8,
        usize::MAX / 8 * 4,
        usize::MAX / 8 * 8
    );
    let mut b = (h.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(h.as_bytes());
    err_msg(parse_case(&b), &["the input bytes"]);
    // Huge B with no positions at all.
    let mut raw = Raw::new();
    for name in ["cls_logits.0", "cnt_logits.0", "reg_preds.0"] {
        set(
            &mut raw,
            name,
            Dtype::F32,
            vec![usize::MAX, 1, 0, 1],
            vec![],
        );
    }
    set(
        &mut raw,
        "cls_targets",
        Dtype::F32,
        vec![usize::MAX, 0, 1],
        vec![],
    );
    set(
        &mut raw,
        "cnt_targets",
        Dtype::F32,
        vec![usize::MAX, 0, 1],
        vec![],
    );
    set(
        &mut raw,
        "reg_targets",
        Dtype::F32,
        vec![usize::MAX, 0, 4],
        vec![],
    );
    err_msg(parse_case(&serialize(&raw)), &["cls_logits", "0x1"]);
    // A shape whose element count overflows.
    let h = format!(
        "{{\"cls_logits.0\":{{\"dtype\":\"F32\",\"shape\":[{}, {}, 0, 4],\"data_offsets\":[0,0]}}}}",
        usize::MAX,
        usize::MAX
    );
    let mut b = (h.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(h.as_bytes());
    assert!(parse_case(&b).is_err());
}

#[test]
fn an_f64_value_beyond_f32_is_named_as_such() {
    let mut raw = small();
    let (_, shape, bytes) = raw["cnt_targets"].clone();
    let mut values: Vec<f64> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
        .collect();
    values[3] = 1e300;
    let bytes: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
    set(&mut raw, "cnt_targets", Dtype::F64, shape, bytes);
    err_msg(
        parse_case(&serialize(&raw)),
        &["'cnt_targets'", "index 3", "outside the f32 range", "1e300"],
    );
}
