//! What the API server says it served: `apiserver_request_total` from its `/metrics`,
//! by verb, resource and response code, and the differences between two scrapes.

use std::collections::BTreeMap;
use std::fmt;

/// One kind of API request, labelled the way `apiserver_request_total` labels it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestKind {
    /// `GET`, `LIST`, `WATCH`, `POST`, `PUT`, `PATCH`, `APPLY`, `DELETE`,
    /// `DELETECOLLECTION`.
    pub verb: String,
    /// API group (empty for the core group).
    pub group: String,
    /// Resource (plural), e.g. `jobs`.
    pub resource: String,
    /// Subresource, e.g. `status` (empty for none).
    pub subresource: String,
}

impl RequestKind {
    /// A request kind from its parts.
    pub fn new(verb: &str, group: &str, resource: &str, subresource: &str) -> Self {
        RequestKind {
            verb: verb.to_owned(),
            group: group.to_owned(),
            resource: resource.to_owned(),
            subresource: subresource.to_owned(),
        }
    }

    /// Whether it writes a status subresource (`PATCH`, `APPLY` or `PUT` on `…/status`).
    pub fn is_status_write(&self) -> bool {
        self.subresource == "status" && matches!(self.verb.as_str(), "PATCH" | "APPLY" | "PUT")
    }
}

impl fmt::Display for RequestKind {
    /// `VERB resource[.group][/subresource]`, e.g. `APPLY backuptargets.stowage.dev/status`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.verb, self.resource)?;
        if !self.group.is_empty() {
            write!(f, ".{}", self.group)?;
        }
        if !self.subresource.is_empty() {
            write!(f, "/{}", self.subresource)?;
        }
        Ok(())
    }
}

/// `apiserver_request_total` at one instant (or the difference of two): how many
/// resource requests of each kind were answered with each HTTP code. Requests for
/// non-resource URLs (`/metrics`, `/readyz`) are left out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestTotals {
    counts: BTreeMap<(RequestKind, String), u64>,
}

impl RequestTotals {
    /// Reads the `apiserver_request_total` samples of a Prometheus text exposition.
    /// Lines that do not parse are skipped.
    pub fn parse(text: &str) -> RequestTotals {
        let mut counts = BTreeMap::new();
        for sample in samples(text, "apiserver_request_total") {
            let label = |name: &str| sample.labels.get(name).cloned().unwrap_or_default();
            let kind = RequestKind {
                verb: label("verb"),
                group: label("group"),
                resource: label("resource"),
                subresource: label("subresource"),
            };
            if kind.resource.is_empty() {
                continue;
            }
            // Versions and scopes of one resource are summed.
            *counts.entry((kind, label("code"))).or_insert(0) += sample.value.round() as u64;
        }
        RequestTotals { counts }
    }

    /// The requests counted since `earlier` (a counter that went down, as after a server
    /// restart, counts from zero).
    pub fn since(&self, earlier: &RequestTotals) -> RequestTotals {
        let counts = self
            .counts
            .iter()
            .map(|(key, now)| {
                let before = earlier.counts.get(key).copied().unwrap_or(0);
                let delta = if *now >= before { now - before } else { *now };
                (key.clone(), delta)
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        RequestTotals { counts }
    }

    /// Requests per kind, all codes together.
    pub fn by_kind(&self) -> BTreeMap<RequestKind, u64> {
        let mut out = BTreeMap::new();
        for ((kind, _), n) in &self.counts {
            *out.entry(kind.clone()).or_insert(0) += n;
        }
        out
    }

    /// Requests answered with a 5xx code, per kind and code.
    pub fn server_errors(&self) -> BTreeMap<(RequestKind, String), u64> {
        self.counts
            .iter()
            .filter(|((_, code), n)| code.starts_with('5') && **n > 0)
            .map(|(key, n)| (key.clone(), *n))
            .collect()
    }

    /// Requests per kind and code.
    pub fn by_kind_and_code(&self) -> &BTreeMap<(RequestKind, String), u64> {
        &self.counts
    }
}

/// One sample of a Prometheus text exposition.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// The samples of metric `name` in a Prometheus (or OpenMetrics) text exposition: lines
/// `name{label="value",...} number [timestamp]` or `name number`. Comments and lines that
/// do not parse are skipped.
pub fn samples(text: &str, name: &str) -> Vec<Sample> {
    text.lines()
        .filter_map(|line| line.strip_prefix(name))
        .filter_map(|rest| {
            let (labels, rest) = match rest.strip_prefix('{') {
                Some(inner) => parse_labels(inner)?,
                None if rest.starts_with(' ') => (BTreeMap::new(), rest),
                None => return None,
            };
            let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
            Some(Sample { labels, value })
        })
        .collect()
}

/// Parses `a="x",b="y\"z"}` up to the closing brace; returns the labels and the rest.
fn parse_labels(text: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let (name, after) = rest.split_once('=')?;
        let mut chars = after.strip_prefix('"')?.char_indices();
        let mut value = String::new();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '"' => break i,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                c => value.push(c),
            }
        };
        labels.insert(name.trim().to_owned(), value);
        rest = &after[end + 2..];
    }
}

/// Scrapes the API server's `/metrics` with `client` (which must be allowed to read it,
/// as the admin is).
pub async fn scrape(client: &kube::Client) -> Result<RequestTotals, kube::Error> {
    Ok(RequestTotals::parse(&scrape_text(client).await?))
}

/// The API server's `/metrics` text.
pub async fn scrape_text(client: &kube::Client) -> Result<String, kube::Error> {
    let request = http::Request::get("/metrics")
        .body(Vec::new())
        .map_err(kube::Error::HttpError)?;
    client.request_text(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP apiserver_request_total [STABLE] Counter of apiserver requests
# TYPE apiserver_request_total counter
apiserver_request_total{code="200",component="apiserver",dry_run="",group="batch",resource="jobs",scope="namespace",subresource="",verb="LIST",version="v1"} 12
apiserver_request_total{code="200",component="apiserver",dry_run="",group="batch",resource="jobs",scope="cluster",subresource="",verb="LIST",version="v1"} 3
apiserver_request_total{code="201",component="apiserver",dry_run="",group="batch",resource="jobs",scope="resource",subresource="",verb="POST",version="v1"} 1.5e+03
apiserver_request_total{code="503",component="apiserver",dry_run="",group="stowage.dev",resource="backuptargets",scope="resource",subresource="status",verb="APPLY",version="v1alpha1"} 2
apiserver_request_total{code="200",component="",dry_run="",group="",resource="",scope="",subresource="/metrics",verb="GET",version=""} 40
apiserver_request_total_extra{code="200"} 99
apiserver_request_duration_seconds_bucket{le="0.1"} 4
"#;

    #[test]
    fn totals_sum_versions_and_scopes_and_skip_non_resource_urls() {
        let totals = RequestTotals::parse(TEXT);
        let by_kind = totals.by_kind();
        assert_eq!(by_kind[&RequestKind::new("LIST", "batch", "jobs", "")], 15);
        assert_eq!(
            by_kind[&RequestKind::new("POST", "batch", "jobs", "")],
            1500
        );
        assert_eq!(by_kind.len(), 3, "{by_kind:?}");
        let errors = totals.server_errors();
        assert_eq!(
            errors.into_iter().collect::<Vec<_>>(),
            vec![(
                (
                    RequestKind::new("APPLY", "stowage.dev", "backuptargets", "status"),
                    "503".to_owned()
                ),
                2
            )]
        );
    }

    #[test]
    fn differences_count_what_happened_between_scrapes() {
        let before = RequestTotals::parse(TEXT);
        let after = RequestTotals::parse(
            &TEXT.replace("LIST\",version=\"v1\"} 12", "LIST\",version=\"v1\"} 20"),
        );
        let delta = after.since(&before);
        assert_eq!(
            delta.by_kind().into_iter().collect::<Vec<_>>(),
            vec![(RequestKind::new("LIST", "batch", "jobs", ""), 8)]
        );
        // A restarted server starts from zero: what it counted is new.
        let restarted = RequestTotals::parse(&TEXT.replace("} 1.5e+03", "} 7"));
        assert_eq!(
            restarted.since(&before).by_kind()[&RequestKind::new("POST", "batch", "jobs", "")],
            7
        );
    }

    #[test]
    fn labels_with_escapes_and_bare_samples_parse() {
        let text = "m{a=\"x\\\"y\",b=\"\\\\\"} 1\nm 2\nmx 3\n";
        let got = samples(text, "m");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].labels["a"], "x\"y");
        assert_eq!(got[0].labels["b"], "\\");
        assert_eq!(got[1].value, 2.0);
    }

    #[test]
    fn kinds_print_like_kubectl_resources_and_status_writes_are_recognised() {
        let kind = RequestKind::new("APPLY", "stowage.dev", "backuptargets", "status");
        assert_eq!(kind.to_string(), "APPLY backuptargets.stowage.dev/status");
        assert!(kind.is_status_write());
        assert_eq!(
            RequestKind::new("GET", "", "persistentvolumeclaims", "").to_string(),
            "GET persistentvolumeclaims"
        );
        assert!(
            !RequestKind::new("GET", "stowage.dev", "backuptargets", "status").is_status_write()
        );
    }
}
