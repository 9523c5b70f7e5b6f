//! The JSON the commands write (`summary.json`, `bench --json` lines,
//! `tune`'s lines, `mpi-train --out`): serde_json with `", "` between items
//! and `": "` after keys, one object per line, the layout the docs quote and
//! that scripts and tests search.

use serde::ser::{Serialize, SerializeMap, Serializer};
use std::io;

/// serde_json's compact layout with a space after each `,` and `:`.
struct Spaced;

impl serde_json::ser::Formatter for Spaced {
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }
}

/// `value` as one line of JSON (no newline). Non-finite numbers are written
/// as `null` (serde_json's rule, and what the readers of these files expect
/// for a run that never reached its target).
pub fn line<T: Serialize + ?Sized>(value: &T) -> String {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, Spaced);
    // Only a map with non-string keys or a failing writer can fail; the
    // application's values have string keys and the writer is memory.
    value
        .serialize(&mut ser)
        .expect("the application's JSON values serialise");
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// `x` rounded to `decimals` places, as the lines print it (a rate to 0.1
/// GFLOP/s, a ratio to 0.001); non-finite values stay as they are.
pub fn round(x: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    if x.is_finite() {
        (x * scale).round() / scale
    } else {
        x
    }
}

/// A JSON object whose keys keep the order given (serde_json's own map sorts
/// them): per-optimizer figures listed as `ng`, `adam`, `sgd`.
pub struct Ordered<V>(pub Vec<(&'static str, V)>);

impl<V: Serialize> Serialize for Ordered<V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    #[derive(serde::Serialize)]
    struct Example {
        name: &'static str,
        values: Vec<u32>,
        missing: Option<f64>,
        infinite: f64,
    }

    #[test]
    fn layout_is_spaced_and_non_finite_is_null() {
        let e = Example {
            name: "a\"b",
            values: vec![1, 2, 3],
            missing: None,
            infinite: f64::INFINITY,
        };
        assert_eq!(
            super::line(&e),
            r#"{"name": "a\"b", "values": [1, 2, 3], "missing": null, "infinite": null}"#
        );
        let ordered = super::Ordered(vec![("ng", 1.5), ("adam", 2.0)]);
        assert_eq!(super::line(&ordered), r#"{"ng": 1.5, "adam": 2.0}"#);
        assert_eq!(super::round(1.23456, 3), 1.235);
    }
}
