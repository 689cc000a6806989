//! Output: figures on stdout (one per line: layout, section, name, value, unit), progress
//! on stderr with a timestamp.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::time::Duration;

use stowage_testenv::bench::api_metrics::{RequestKind, RequestTotals};

/// A progress line on stderr.
pub fn progress(message: impl Display) {
    eprintln!(
        "[{} controller_scale] {message}",
        jiff::Zoned::now().strftime("%H:%M:%S")
    );
}

/// Seconds with two decimals.
pub fn seconds(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64())
}

/// Prints the figures of one layout.
pub struct Report {
    layout: String,
}

/// Resources the operator reads or writes; requests for anything else (the API server's
/// own leases and bookkeeping, the operator's Lease) are summed as `other`.
pub fn operator_resource(kind: &RequestKind) -> bool {
    match kind.group.as_str() {
        "stowage.dev" | "batch" | "events.k8s.io" => true,
        "" => matches!(
            kind.resource.as_str(),
            "pods" | "persistentvolumeclaims" | "events"
        ),
        _ => false,
    }
}

impl Report {
    /// A report for layout `layout` (e.g. `1ns`).
    pub fn new(layout: &str) -> Report {
        Report {
            layout: layout.to_owned(),
        }
    }

    /// One figure.
    pub fn figure(&self, section: &str, name: &str, value: impl Display, unit: &str) {
        println!(
            "{:<5} {:<22} {:<44} {:>10} {unit}",
            self.layout,
            section,
            name,
            value.to_string()
        );
    }

    /// The requests of one window: the API server's count of each kind minus the
    /// benchmark's own, largest first (with the 4xx answers among them by code, e.g.
    /// `12x409` for Jobs that existed, `x429` for requests API Priority and Fairness
    /// turned away), then the total and the rest as `other`.
    /// Returns the operator's status writes in the window.
    pub fn requests(
        &self,
        window: &str,
        server: &RequestTotals,
        bench: &BTreeMap<RequestKind, u64>,
    ) -> u64 {
        let section = format!("requests:{window}");
        let mut refused: BTreeMap<RequestKind, Vec<String>> = BTreeMap::new();
        for ((kind, code), n) in server.by_kind_and_code() {
            if code.starts_with('4') {
                refused
                    .entry(kind.clone())
                    .or_default()
                    .push(format!("{n}x{code}"));
            }
        }
        let mut rows: Vec<(RequestKind, u64, u64)> = server
            .by_kind()
            .into_iter()
            .map(|(kind, total)| {
                let own = bench.get(&kind).copied().unwrap_or(0);
                (kind, total, own)
            })
            .collect();
        rows.sort_by_key(|(kind, total, own)| {
            (std::cmp::Reverse(total.saturating_sub(*own)), kind.clone())
        });
        let (mut operator_total, mut other, mut status_writes) = (0u64, 0u64, 0u64);
        for (kind, total, own) in &rows {
            let operator = total.saturating_sub(*own);
            if !operator_resource(kind) {
                other += operator;
                continue;
            }
            operator_total += operator;
            if kind.is_status_write() {
                status_writes += operator;
            }
            if *total > 0 {
                let refused = match refused.get(kind) {
                    Some(codes) => format!(", answered {}", codes.join(" ")),
                    None => String::new(),
                };
                self.figure(
                    &section,
                    &kind.to_string(),
                    operator,
                    &format!("(server {total}, bench {own}{refused})"),
                );
            }
        }
        self.figure(&section, "total (operator resources)", operator_total, "");
        self.figure(&section, "other (leases, API server)", other, "");
        status_writes
    }
}
