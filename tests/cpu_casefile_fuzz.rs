//! Fuzzing the case reader: 30,460 generated safetensors inputs to
//! `casefile::parse_case`, with no panic allowed anywhere. Inputs that parse go on
//! to `Inputs::check_shapes` and `check_values`, and those that pass must give
//! finite CPU-reference losses.
//!
//! The inputs are deterministic (the crate's SplitMix64 `Rng` with fixed seeds):
//! random bytes, every truncation of several valid files, byte flips, header
//! JSON rewrites (dtypes, shapes, offsets, names, huge numbers, junk), special
//! values in the data section, and consistent re-encodings in other dtypes.
//! Most of them are malformed, not all: of the 30,460, 28,316 are refused
//! (27,054 by `parse_case`, 1,262 by `check_values`) and 2,144 are valid cases
//! that reach the reference. The test asserts these counts exactly (see
//! [`EXPECTED`]).
#![cfg(feature = "casefile")]

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use fcos_loss::casefile::{parse_case, write_case, Case, Expected};
use fcos_loss::check_values;
use fcos_loss::synthetic::{self, Rng, SyntheticSpec};
use fcos_loss::{reference, Head, Heads, Levels, LossConfig, RegLoss};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde_json::{json, Value};

/// Where each input ended up.
#[derive(Debug, Default)]
struct Tally {
    inputs: usize,
    parse_err: usize,
    value_err: usize,
    passed: usize,
    panics: Vec<String>,
}

impl Tally {
    /// Runs one input through the reader, the validator and the reference.
    fn run(&mut self, what: &str, bytes: &[u8]) {
        self.inputs += 1;
        let outcome = catch_unwind(AssertUnwindSafe(|| follow_through(bytes)));
        match outcome {
            Ok(Ok(Stage::ParseErr)) => self.parse_err += 1,
            Ok(Ok(Stage::ValueErr)) => self.value_err += 1,
            Ok(Ok(Stage::Passed)) => self.passed += 1,
            Ok(Err(broken)) => self
                .panics
                .push(format!("{what}: {broken}; {}", hex(bytes))),
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                self.panics
                    .push(format!("{what}: panic '{msg}'; {}", hex(bytes)));
            }
        }
    }
}

enum Stage {
    ParseErr,
    ValueErr,
    Passed,
}

/// The whole path of one input; `Err` is a broken contract (not a panic).
fn follow_through(bytes: &[u8]) -> Result<Stage, String> {
    let Ok(case) = parse_case(bytes) else {
        return Ok(Stage::ParseErr);
    };
    let b = &case.batch;
    let inputs = b.inputs();
    if let Err(e) = inputs.check_shapes(&b.levels, b.classes) {
        return Err(format!(
            "parse_case accepted a case check_shapes refuses: {e}"
        ));
    }
    if check_values(&b.levels, &inputs, b.classes).is_err() {
        return Ok(Stage::ValueErr);
    }
    for mode in [RegLoss::Iou, RegLoss::Giou] {
        let config = LossConfig::new(b.classes as u32).with_reg_loss(mode);
        let l = reference::losses(&config, &b.levels, &inputs)
            .map_err(|e| format!("the reference refused a validated case: {e}"))?;
        let all = l.cls.iter().chain(&l.cnt).chain(&l.reg);
        if !all.chain([&l.total]).all(|v| v.is_finite()) {
            return Err(format!("non-finite losses from a validated case: {l:?}"));
        }
    }
    Ok(Stage::Passed)
}

/// The input as hex (the first 600 bytes) for a failure message.
fn hex(bytes: &[u8]) -> String {
    let shown: String = bytes.iter().take(600).map(|b| format!("{b:02x}")).collect();
    format!("{} bytes: {shown}", bytes.len())
}

// ---------------------------------------------------------------------------
// Valid starting points

/// A synthetic case with `expected.*` (losses from the reference, gradients
/// of the right shapes), serialized by `casefile::write_case`.
fn synthetic_file(shapes: &[(u32, u32)], b: usize, c: usize, expected: bool, seed: u64) -> Vec<u8> {
    let levels = Levels::from_shapes(shapes).unwrap();
    let mut spec = SyntheticSpec::new(b, c);
    spec.pos_frac = vec![0.3, 0.0, 1.0];
    spec.seed = seed;
    let batch = synthetic::generate(&levels, &[8, 16, 32], &spec).unwrap();
    let expected = expected.then(|| {
        let l = reference::losses(&LossConfig::new(c as u32), &levels, &batch.inputs()).unwrap();
        let grad = |h: Head| -> Vec<Vec<f32>> {
            (0..levels.len())
                .map(|l| vec![0.125; levels.level_len(l, b, h.channels(c))])
                .collect()
        };
        Expected {
            cls_loss: l.cls.clone(),
            cnt_loss: l.cnt.clone(),
            reg_loss: l.reg.clone(),
            reg_loss_giou: Some(l.reg.clone()),
            grad: Some(Heads::from_fn(grad)),
            grad_giou_reg: Some(grad(Head::RegPreds)),
            // The normalisation's expectations are left out: the generated files
            // (and the counts asserted below) stay those of the plain case format.
            sums: None,
            batch: None,
            global_ctr: None,
            grad_global_ctr: None,
        }
    });
    let case = Case {
        batch,
        targets_given: true,
        boxes: None,
        expected,
        half: None,
    };
    let path = std::env::temp_dir().join(format!(
        "fcos_loss_fuzz_{}_{seed}.safetensors",
        std::process::id()
    ));
    write_case(&path, &case).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(parse_case(&bytes).is_ok(), "the starting file must parse");
    bytes
}

fn bases() -> Vec<Vec<u8>> {
    let golden =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/single_b1_c1_64x64.safetensors");
    let mut v = vec![
        synthetic_file(&[(3, 4), (2, 2), (1, 1)], 2, 3, true, 1),
        synthetic_file(&[(2, 3), (0, 4), (1, 1)], 3, 2, false, 2),
        synthetic_file(&[(1, 1)], 1, 1, true, 3),
    ];
    let bytes = std::fs::read(&golden).unwrap_or_else(|e| panic!("{}: {e}", golden.display()));
    assert!(parse_case(&bytes).is_ok());
    v.push(bytes);
    v
}

/// `(header JSON, data section)` of a well-formed file.
fn split(bytes: &[u8]) -> (serde_json::Map<String, Value>, Vec<u8>) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let Value::Object(map) = header else {
        panic!("header is an object")
    };
    (map, bytes[8 + n..].to_vec())
}

fn join(header: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header);
    out.extend_from_slice(data);
    out
}

// ---------------------------------------------------------------------------
// Random pieces

fn pick<'a, T>(rng: &mut Rng, xs: &'a [T]) -> &'a T {
    &xs[rng.range(0, xs.len() as u64 - 1) as usize]
}

fn chance(rng: &mut Rng, p: f64) -> bool {
    rng.uniform() < p
}

const DTYPES: [&str; 24] = [
    "F32", "F64", "F16", "BF16", "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL",
    "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2", "C64", "f32", "", "F33", "FLOAT",
];

const HEADER_KEYS: [&str; 20] = [
    "cls_logits.0",
    "cls_logits.1",
    "cls_logits.9",
    "cls_logits.01",
    "cls_logits.",
    "cls_logits.-1",
    "cls_logits.+1",
    "cnt_logits.7",
    "reg_preds.2",
    "cls_targets",
    "cnt_targets",
    "reg_targets",
    "expected.cls_loss",
    "expected.reg_loss_giou",
    "expected.grad.cls_logits.0",
    "expected.grad.reg_preds.5",
    "expected.grad_giou.reg_preds.0",
    "expected.",
    "",
    "cls_logits.18446744073709551616",
];

/// A JSON number (or something that is not one) for a shape entry or an offset.
fn number(rng: &mut Rng, near: u64) -> Value {
    match rng.range(0, 13) {
        0 => json!(0),
        1 => json!(1),
        2 => json!(near),
        3 => json!(near + 1),
        4 => json!(near.saturating_sub(1)),
        5 => json!(u32::MAX),
        6 => json!(1u64 << 32),
        7 => json!(1u64 << 62),
        8 => json!(u64::MAX),
        9 => json!(-1),
        10 => json!(2.5),
        11 => json!("4"),
        12 => Value::Null,
        _ => json!(rng.range(0, 64)),
    }
}

fn junk(rng: &mut Rng) -> Value {
    match rng.range(0, 7) {
        0 => Value::Null,
        1 => json!(true),
        2 => json!(-3.5e300),
        3 => json!("F32"),
        4 => json!([1, 2, 3]),
        5 => json!({"dtype": "F32"}),
        6 => json!({"dtype": "F32", "shape": [], "data_offsets": [0, 4]}),
        _ => json!({}),
    }
}

/// One random edit of a header.
fn mutate_header(rng: &mut Rng, h: &mut serde_json::Map<String, Value>, data_len: u64) {
    let keys: Vec<String> = h.keys().cloned().collect();
    if keys.is_empty() {
        h.insert(pick(rng, &HEADER_KEYS).to_string(), junk(rng));
        return;
    }
    let key = pick(rng, &keys).clone();
    match rng.range(0, 11) {
        0 => {
            if let Some(Value::Object(t)) = h.get_mut(&key) {
                t.insert("dtype".into(), json!(pick(rng, &DTYPES)));
            }
        }
        1 | 2 => {
            let rank = rng.range(0, 5);
            let shape: Vec<Value> = (0..rank)
                .map(|_| {
                    if chance(rng, 0.6) {
                        json!(rng.range(0, 5))
                    } else {
                        number(rng, 17)
                    }
                })
                .collect();
            if let Some(Value::Object(t)) = h.get_mut(&key) {
                t.insert("shape".into(), Value::Array(shape));
            }
        }
        3 => {
            // Shape entries scaled so the element count may still match.
            if let Some(Value::Object(t)) = h.get_mut(&key) {
                if let Some(Value::Array(s)) = t.get_mut("shape") {
                    if !s.is_empty() {
                        let i = rng.range(0, s.len() as u64 - 1) as usize;
                        let j = rng.range(0, s.len() as u64 - 1) as usize;
                        s.swap(i, j);
                        if chance(rng, 0.5) {
                            s.insert(i, json!(1));
                        }
                        if chance(rng, 0.3) {
                            s.push(json!(0));
                        }
                    }
                }
            }
        }
        4 | 5 => {
            let o = if chance(rng, 0.7) {
                Value::Array(vec![number(rng, data_len), number(rng, data_len)])
            } else {
                match rng.range(0, 3) {
                    0 => json!([0]),
                    1 => json!([0, 4, 8]),
                    2 => json!({"0": 0, "1": 4}),
                    _ => json!([data_len, 0]),
                }
            };
            if let Some(Value::Object(t)) = h.get_mut(&key) {
                t.insert("data_offsets".into(), o);
            }
        }
        6 => {
            h.remove(&key);
        }
        7 => {
            if let Some(v) = h.remove(&key) {
                h.insert(pick(rng, &HEADER_KEYS).to_string(), v);
            }
        }
        8 => {
            h.insert(key, junk(rng));
        }
        9 => {
            let meta = match rng.range(0, 3) {
                0 => json!({"format": "pt"}),
                1 => json!({"n": 3}),
                2 => json!("pt"),
                _ => json!(null),
            };
            h.insert("__metadata__".into(), meta);
        }
        _ => {
            // Swap the infos of two tensors (shape/dtype/offsets all move).
            let other = pick(rng, &keys).clone();
            if let (Some(a), Some(b)) = (h.get(&key).cloned(), h.get(&other).cloned()) {
                h.insert(key, b);
                h.insert(other, a);
            }
        }
    }
}

/// Random bytes, sometimes shaped like a safetensors prefix.
fn random_bytes(rng: &mut Rng) -> Vec<u8> {
    let len = rng.range(0, 400) as usize;
    let mut v: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
    if len >= 8 && chance(rng, 0.6) {
        let n = if chance(rng, 0.5) {
            (len - 8) as u64
        } else {
            rng.range(0, len as u64)
        };
        v[..8].copy_from_slice(&n.to_le_bytes());
        if chance(rng, 0.5) && len > 9 {
            // JSON-ish characters.
            const CH: &[u8] = b"{}[]\":,0123456789-.eE aF32shapedtypedata_offsetscls_logits";
            for x in v[8..].iter_mut() {
                *x = *pick(rng, CH);
            }
            v[8] = b'{';
        }
    }
    v
}

/// Special f32 values to drop into the data section.
const SPECIAL_F32: [f32; 12] = [
    f32::NAN,
    f32::INFINITY,
    f32::NEG_INFINITY,
    -1.0,
    -0.5,
    1.5,
    2.5,
    f32::MAX,
    -f32::MAX,
    1e-45,
    1e30,
    100.0,
];

/// Re-encodes a valid file tensor by tensor, converting some to other dtypes or
/// to `[B, P]` targets: mostly still valid, sometimes not.
fn reencode(rng: &mut Rng, bytes: &[u8]) -> Vec<u8> {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    // `tensors()` comes in hash order: sort, so that the run is reproducible.
    let mut tensors = st.tensors();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, view) in tensors {
        let vals: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let mut shape = view.shape().to_vec();
        if name.ends_with("_targets") && shape.len() == 3 && shape[2] == 1 && chance(rng, 0.5) {
            shape.pop();
        }
        let dtype = *pick(
            rng,
            &[
                Dtype::F32,
                Dtype::F32,
                Dtype::F64,
                Dtype::F16,
                Dtype::BF16,
                Dtype::I64,
                Dtype::I32,
                Dtype::U8,
                Dtype::BOOL,
            ],
        );
        let data: Vec<u8> = match dtype {
            Dtype::F64 => vals
                .iter()
                .flat_map(|&x| (x as f64).to_le_bytes())
                .collect(),
            Dtype::F16 => vals
                .iter()
                .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                .collect(),
            Dtype::BF16 => vals
                .iter()
                .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
                .collect(),
            Dtype::I64 => vals
                .iter()
                .flat_map(|&x| (x as i64).to_le_bytes())
                .collect(),
            Dtype::I32 => vals
                .iter()
                .flat_map(|&x| (x as i32).to_le_bytes())
                .collect(),
            Dtype::U8 | Dtype::BOOL => vals.iter().map(|&x| x as u8).collect(),
            _ => vals.iter().flat_map(|&x| x.to_le_bytes()).collect(),
        };
        owned.push((name, dtype, shape, data));
    }
    let views: Vec<(String, TensorView<'_>)> = owned
        .iter()
        .map(|(n, d, s, data)| (n.clone(), TensorView::new(*d, s.clone(), data).unwrap()))
        .collect();
    let meta = chance(rng, 0.3).then(|| HashMap::from([("format".to_string(), "pt".to_string())]));
    safetensors::tensor::serialize(views, meta).unwrap()
}

#[test]
fn parse_case_never_panics_on_malformed_input() {
    let start = std::time::Instant::now();
    let bases = bases();
    let mut t = Tally::default();
    let mut rng = Rng::new(0x5eed_f00d);

    // 1. Random bytes.
    for i in 0..2000 {
        let v = random_bytes(&mut rng);
        t.run(&format!("random bytes #{i}"), &v);
    }

    for (bi, base) in bases.iter().enumerate() {
        let (header, data) = split(base);
        let hlen = base.len() - data.len();

        // 2. Truncations: every prefix of the small files (header and the
        //    first data bytes densely, then a random sample), and extensions.
        let cuts: Vec<usize> = if base.len() <= 6000 {
            (0..base.len()).collect()
        } else {
            let mut c: Vec<usize> = (0..hlen + 64).collect();
            c.extend((0..1500).map(|_| rng.range(0, base.len() as u64 - 1) as usize));
            c
        };
        for k in cuts {
            t.run(&format!("base {bi} truncated to {k}"), &base[..k]);
        }
        for extra in [1usize, 3, 4, 8, 100] {
            let mut v = base.clone();
            v.extend(std::iter::repeat_n(0u8, extra));
            t.run(&format!("base {bi} plus {extra} bytes"), &v);
        }

        // 3. Byte flips, mostly in the header.
        for i in 0..1000 {
            let mut v = base.clone();
            let flips = rng.range(1, 3);
            for _ in 0..flips {
                let at = if chance(&mut rng, 0.7) {
                    rng.range(0, hlen as u64 - 1)
                } else {
                    rng.range(0, v.len() as u64 - 1)
                } as usize;
                let x = rng.range(1, 255) as u8;
                v[at] ^= x;
            }
            t.run(&format!("base {bi} byte flip #{i}"), &v);
        }

        // 4. Header rewrites.
        for i in 0..1500 {
            let mut h = header.clone();
            for _ in 0..rng.range(1, 3) {
                mutate_header(&mut rng, &mut h, data.len() as u64);
            }
            let mut text = serde_json::to_vec(&Value::Object(h)).unwrap();
            if chance(&mut rng, 0.1) {
                text.extend(std::iter::repeat_n(b' ', rng.range(1, 9) as usize));
            }
            let mut bytes = join(&text, &data);
            match rng.range(0, 9) {
                0 => {
                    // Wrong header length.
                    let n = text.len() as i64 + rng.range(0, 8) as i64 - 4;
                    bytes[..8].copy_from_slice(&(n.max(0) as u64).to_le_bytes());
                }
                1 => {
                    bytes.truncate(bytes.len().saturating_sub(rng.range(1, 16) as usize));
                }
                2 => {
                    bytes.extend(std::iter::repeat_n(0u8, rng.range(1, 16) as usize));
                }
                _ => {}
            }
            t.run(&format!("base {bi} header rewrite #{i}"), &bytes);
        }

        // 5. Whole headers of random JSON.
        for i in 0..200 {
            let v = match rng.range(0, 9) {
                0 => json!([]),
                1 => json!(42),
                2 => json!("cls_logits.0"),
                3 => json!(null),
                4 => {
                    json!({"cls_logits.0": {"dtype": "F32", "shape": [1, 1, 1, 1], "data_offsets": [0, 4]}})
                }
                5 => {
                    json!({"cls_logits.0": {"dtype": "F32", "shape": [u64::MAX, 2, 1, 1], "data_offsets": [0, 0]}})
                }
                6 => {
                    json!({"cls_logits.0": {"dtype": "F32", "shape": [0, 1, 1, 1], "data_offsets": [0, 0]}})
                }
                7 => {
                    json!({"cls_logits.0": {"dtype": "F32", "shape": [1, 1, 4294967296u64, 0], "data_offsets": [0, 0]}})
                }
                8 => json!({"__metadata__": {"a": "b"}}),
                _ => json!({}),
            };
            let mut text = serde_json::to_vec(&v).unwrap();
            if chance(&mut rng, 0.3) {
                // Deep nesting and out-of-range literals, written by hand.
                text = match rng.range(0, 3) {
                    0 => format!("{}{}", "[".repeat(200), "]".repeat(200)).into_bytes(),
                    1 => br#"{"cls_logits.0": {"dtype": "F32", "shape": [1e400], "data_offsets": [0, 18446744073709551616]}}"#.to_vec(),
                    2 => br#"{"cls_logits.0": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "data_offsets": [0, 99999999999999]}}"#.to_vec(),
                    _ => br#"{"a": "\ud800"}"#.to_vec(),
                };
            }
            let cut = data.len().min(rng.range(0, 64) as usize);
            t.run(
                &format!("base {bi} random header #{i}"),
                &join(&text, &data[..cut]),
            );
        }

        // 6. Special values in the data section (F32 files): most parse, and
        //    the validator decides.
        let f32_data = bi < 3;
        for i in 0..if f32_data { 1000 } else { 0 } {
            let mut v = base.clone();
            for _ in 0..rng.range(1, 3) {
                let slot = rng.range(0, (data.len() / 4) as u64 - 1) as usize;
                let at = hlen + 4 * slot;
                let x = *pick(&mut rng, &SPECIAL_F32);
                v[at..at + 4].copy_from_slice(&x.to_le_bytes());
            }
            t.run(&format!("base {bi} special value #{i}"), &v);
        }

        // 7. Consistent re-encodings in other dtypes.
        for i in 0..if f32_data { 200 } else { 0 } {
            let v = reencode(&mut rng, base);
            t.run(&format!("base {bi} re-encoded #{i}"), &v);
        }
    }

    let secs = start.elapsed().as_secs_f64();
    let malformed = t.parse_err + t.value_err;
    eprintln!(
        "cpu_casefile_fuzz: {} inputs in {secs:.2} s: {malformed} malformed ({} rejected by parse_case, {} by check_values), {} valid (passed to the reference), {} broken",
        t.inputs,
        t.parse_err,
        t.value_err,
        t.passed,
        t.panics.len()
    );
    assert!(
        t.panics.is_empty(),
        "{} inputs broke the reader's contract; the first:\n{}",
        t.panics.len(),
        t.panics
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    let got = Counts {
        inputs: t.inputs,
        malformed,
        rejected_by_parse_case: t.parse_err,
        rejected_by_check_values: t.value_err,
        valid: t.passed,
    };
    assert_eq!(got.inputs, got.malformed + got.valid);
    assert!(t.inputs >= 10_000, "only {} inputs", t.inputs);
    assert!(
        t.passed > 0 && t.value_err > 0,
        "every stage must be reached: {t:?}"
    );
    // The inputs are deterministic, so the counts are exact: a change means the
    // generator, the writer, the reader or the validator changed what it makes or
    // accepts. Check which (and that it was meant) before updating `EXPECTED`.
    assert_eq!(got, EXPECTED, "the fuzz inputs no longer split as they did");
}

/// How the inputs of [`parse_case_never_panics_on_malformed_input`] split.
#[derive(Debug, PartialEq, Eq)]
struct Counts {
    /// Every input generated.
    inputs: usize,
    /// Inputs refused, by the reader or by the value checks.
    malformed: usize,
    /// Of those, inputs `parse_case` refused.
    rejected_by_parse_case: usize,
    /// Of those, inputs `parse_case` read and `check_values` refused.
    rejected_by_check_values: usize,
    /// Inputs read, validated and given finite losses by the reference.
    valid: usize,
}

/// The exact split of the deterministic inputs.
const EXPECTED: Counts = Counts {
    inputs: 30_460,
    malformed: 28_316,
    rejected_by_parse_case: 27_054,
    rejected_by_check_values: 1_262,
    valid: 2_144,
};
