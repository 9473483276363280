//! Tensor data to numbers: every float dtype, and the integer dtypes where class
//! indices are allowed, read little-endian without alignment assumptions.

use std::cell::Cell;

use safetensors::tensor::{Dtype, TensorView};

use super::format::{elements, fmt_opt, fmt_shape};
use crate::FcosError;

/// A tensor as `f32`. A finite value (f64 or a large integer) that `f32` cannot
/// hold is an error: it would read as ±Inf and be reported as not finite, which
/// the file's value is not.
pub(super) fn decode_f32(
    name: &str,
    view: &TensorView<'_>,
    allow_int: bool,
) -> Result<Vec<f32>, FcosError> {
    let seen = Cell::new(0usize);
    let overflow = Cell::new(None);
    let out = decode(name, view, allow_int, |x| {
        let y = x as f32;
        if overflow.get().is_none() && x.is_finite() && !y.is_finite() {
            overflow.set(Some((seen.get(), x)));
        }
        seen.set(seen.get() + 1);
        y
    })?;
    match overflow.get() {
        Some((index, value)) => Err(FcosError::Value {
            tensor: name.to_string(),
            index,
            value,
            problem: "outside the f32 range".to_string(),
        }),
        None => Ok(out),
    }
}

/// Converts a tensor to `T` through `f64` (exact for every float dtype read).
/// Integer dtypes are accepted only with `allow_int` (class-index targets).
pub(super) fn decode<T>(
    name: &str,
    view: &TensorView<'_>,
    allow_int: bool,
    conv: impl Fn(f64) -> T,
) -> Result<Vec<T>, FcosError> {
    let dtype = view.dtype();
    let data = view.data();
    let Some((width, values)) = values(dtype, data, allow_int, &conv) else {
        return Err(unusable(name, dtype, allow_int));
    };
    if data.len() % width != 0 {
        return Err(FcosError::File(format!(
            "tensor '{name}': {} bytes of data is not a whole number of {dtype} elements",
            data.len()
        )));
    }
    let want = elements(view.shape());
    if want != Some(values.len()) {
        return Err(FcosError::shape(
            name,
            format!(
                "{} elements for shape {}",
                fmt_opt(want),
                fmt_shape(view.shape())
            ),
            format!("{} elements", values.len()),
        ));
    }
    Ok(values)
}

/// The element width of `dtype` and the data converted; `None` for a dtype that
/// cannot be read here (an integer one without `allow_int`).
fn values<T>(
    dtype: Dtype,
    data: &[u8],
    allow_int: bool,
    float: impl Fn(f64) -> T,
) -> Option<(usize, Vec<T>)> {
    let f = &float;
    Some(match dtype {
        Dtype::F32 => (4, le(data, |a| f(f32::from_le_bytes(a) as f64))),
        Dtype::F64 => (8, le(data, |a| f(f64::from_le_bytes(a)))),
        Dtype::F16 => (2, le(data, |a| f(half::f16::from_le_bytes(a).to_f64()))),
        Dtype::BF16 => (2, le(data, |a| f(half::bf16::from_le_bytes(a).to_f64()))),
        Dtype::I64 if allow_int => (8, le(data, |a| f(i64::from_le_bytes(a) as f64))),
        Dtype::I32 if allow_int => (4, le(data, |a| f(i32::from_le_bytes(a) as f64))),
        Dtype::I16 if allow_int => (2, le(data, |a| f(i16::from_le_bytes(a) as f64))),
        Dtype::I8 if allow_int => (1, le(data, |a| f(i8::from_le_bytes(a) as f64))),
        Dtype::U64 if allow_int => (8, le(data, |a| f(u64::from_le_bytes(a) as f64))),
        Dtype::U32 if allow_int => (4, le(data, |a| f(u32::from_le_bytes(a) as f64))),
        Dtype::U16 if allow_int => (2, le(data, |a| f(u16::from_le_bytes(a) as f64))),
        Dtype::U8 if allow_int => (1, le(data, |a| f(u8::from_le_bytes(a) as f64))),
        _ => return None,
    })
}

/// Little-endian elements of `N` bytes, without alignment assumptions.
fn le<const N: usize, T>(data: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
    data.chunks_exact(N)
        .map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            f(a)
        })
        .collect()
}

/// The error for a dtype [`values`] does not read: integers and booleans cannot
/// hold real values, anything else is not supported.
fn unusable(name: &str, dtype: Dtype, allow_int: bool) -> FcosError {
    let what = match dtype {
        Dtype::I64
        | Dtype::I32
        | Dtype::I16
        | Dtype::I8
        | Dtype::U64
        | Dtype::U32
        | Dtype::U16
        | Dtype::U8
        | Dtype::BOOL => "cannot hold real values",
        _ => "is not supported",
    };
    let allowed = if allow_int {
        "a float dtype (F32, F16, BF16 or F64) or an integer dtype (I64, I32, I16, I8, U64, U32, U16, U8)"
    } else {
        "a float dtype (F32, F16, BF16 or F64)"
    };
    FcosError::File(format!(
        "tensor '{name}': dtype {dtype} {what}; expected {allowed}"
    ))
}
