//! Support for benchmarks against a [`crate::BarePlane`]: what the API server served
//! ([`api_metrics`]) and when it created each Job ([`audit`]), what the benchmark itself
//! sent ([`client_counts`]), process memory ([`procfs`]), a node that finishes Jobs
//! without running pods ([`node`]), small report helpers ([`stats`]) and settings read
//! from the environment ([`knob`]).

pub mod api_metrics;
pub mod audit;
pub mod client_counts;
pub mod node;
pub mod procfs;
pub mod stats;

use std::str::FromStr;

/// A benchmark setting from the environment that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("{name}={value:?} is not valid: {expected}; unset it for the default ({default})")]
pub struct KnobError {
    /// The variable.
    pub name: String,
    /// Its value.
    pub value: String,
    /// What it accepts.
    pub expected: String,
    /// The default, as text.
    pub default: String,
}

/// Environment variable `name` parsed as a `T` (`default` when unset or empty), checked
/// with `accept`, which says what is wrong (e.g. "a number of seconds, at least 1").
pub fn knob<T>(
    name: &str,
    default: T,
    expected: &str,
    accept: impl Fn(&T) -> bool,
) -> Result<T, KnobError>
where
    T: FromStr + std::fmt::Display,
{
    knob_from(
        std::env::var(name).ok().as_deref(),
        name,
        default,
        expected,
        accept,
    )
}

/// [`knob`] over a given value (`None`: unset).
pub fn knob_from<T>(
    value: Option<&str>,
    name: &str,
    default: T,
    expected: &str,
    accept: impl Fn(&T) -> bool,
) -> Result<T, KnobError>
where
    T: FromStr + std::fmt::Display,
{
    let Some(text) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(default);
    };
    match text.parse::<T>() {
        Ok(parsed) if accept(&parsed) => Ok(parsed),
        _ => Err(KnobError {
            name: name.to_owned(),
            value: text.to_owned(),
            expected: expected.to_owned(),
            default: default.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knobs_default_parse_and_name_the_fix() {
        let at_least_one = |n: &u32| *n >= 1;
        let cases: Vec<(Option<&str>, Result<u32, &str>)> = vec![
            (None, Ok(7)),
            (Some(""), Ok(7)),
            (Some(" 12 "), Ok(12)),
            (
                Some("0"),
                Err(
                    "STOWAGE_X=\"0\" is not valid: a count, at least 1; unset it for the default (7)",
                ),
            ),
            (
                Some("many"),
                Err(
                    "STOWAGE_X=\"many\" is not valid: a count, at least 1; unset it for the default (7)",
                ),
            ),
        ];
        for (value, expected) in cases {
            let got = knob_from(
                value,
                "STOWAGE_X",
                7u32,
                "a count, at least 1",
                at_least_one,
            )
            .map_err(|e| e.to_string());
            assert_eq!(got, expected.map_err(str::to_owned), "{value:?}");
        }
    }
}
