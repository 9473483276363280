//! How case-file messages write shapes and counts, and how they stay one line.

use std::fmt::Write as _;

/// `[2, 7, 13, 19]`.
pub(super) fn fmt_shape(s: &[usize]) -> String {
    let mut out = String::from("[");
    for (i, d) in s.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{d}");
    }
    out.push(']');
    out
}

/// `[2, 7] (rank 2)`.
pub(super) fn shape_rank(s: &[usize]) -> String {
    format!("{} (rank {})", fmt_shape(s), s.len())
}

/// An element count, or `more than usize::MAX` when it overflowed.
pub(super) fn fmt_opt(n: Option<usize>) -> String {
    n.map_or_else(|| "more than usize::MAX".to_string(), |n| n.to_string())
}

/// The element count of a shape, `None` when it overflows `usize`.
pub(super) fn elements(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

/// Messages are one line: fold any line breaks from underlying errors.
pub(super) fn one_line(s: String) -> String {
    if s.contains(['\n', '\r']) {
        s.split(['\n', '\r'])
            .filter(|p| !p.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    } else {
        s
    }
}
