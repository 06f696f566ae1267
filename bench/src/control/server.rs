//! The API server's own view of a phase: the mean latency of its requests and of its etcd calls,
//! from the sums and counts of its `/metrics` histograms, so a client-side figure can be split
//! into server, etcd and the rest.

use std::collections::BTreeMap;

use serde::Serialize;

/// Seconds and calls so far, by call (`create pods`, `etcd txn`).
pub(crate) type Totals = BTreeMap<String, (f64, u64)>;

/// Calls of one kind during a phase, as the API server timed them.
#[derive(Debug, Clone, Serialize)]
pub struct ServerCalls {
    /// `create pods` (an API request) or `etcd txn` (the server's call to etcd).
    pub call: String,
    pub calls: u64,
    pub mean_ms: f64,
}

const REQUESTS: &str = "skiff_apiserver_request_duration_seconds";
const ETCD: &str = "skiff_apiserver_etcd_request_duration_seconds";

/// The `_sum` and `_count` of every request and etcd histogram in a `/metrics` text.
pub(crate) fn totals(metrics: &str) -> Totals {
    let mut out = Totals::new();
    for line in metrics.lines() {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Some((name, labels)) = series.strip_suffix('}').and_then(|s| s.split_once('{')) else {
            continue;
        };
        let (histogram, part) = match name.rsplit_once('_') {
            Some((h, p @ ("sum" | "count"))) if h == REQUESTS || h == ETCD => (h, p),
            _ => continue,
        };
        let values: Vec<&str> = labels
            .split(',')
            .filter_map(|kv| kv.split_once('=').map(|(_, v)| v.trim_matches('"')))
            .collect();
        let call = if histogram == ETCD {
            format!("etcd {}", values.join(" "))
        } else {
            values.join(" ")
        };
        let Ok(v) = value.parse::<f64>() else {
            continue;
        };
        let entry = out.entry(call).or_default();
        if part == "sum" {
            entry.0 = v;
        } else {
            entry.1 = v as u64;
        }
    }
    out
}

/// What happened between two snapshots, calls that happened only.
pub(crate) fn between(before: &Totals, after: &Totals) -> Vec<ServerCalls> {
    after
        .iter()
        .filter_map(|(call, &(secs, n))| {
            let (secs0, n0) = before.get(call).copied().unwrap_or_default();
            let calls = n.checked_sub(n0).filter(|&c| c > 0)?;
            Some(ServerCalls {
                call: call.clone(),
                calls,
                mean_ms: (secs - secs0) / calls as f64 * 1000.0,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "\
# TYPE skiff_apiserver_request_duration_seconds histogram
skiff_apiserver_request_duration_seconds_bucket{verb=\"create\",resource=\"pods\",le=\"0.005\"} 3
skiff_apiserver_request_duration_seconds_sum{verb=\"create\",resource=\"pods\"} 0.01
skiff_apiserver_request_duration_seconds_count{verb=\"create\",resource=\"pods\"} 4
skiff_apiserver_etcd_request_duration_seconds_sum{operation=\"txn\"} 0.5
skiff_apiserver_etcd_request_duration_seconds_count{operation=\"txn\"} 10
skiff_apiserver_watches 3
";

    #[test]
    fn histogram_sums_and_counts_by_call() {
        let t = totals(BEFORE);
        assert_eq!(t.len(), 2);
        assert_eq!(t["create pods"], (0.01, 4));
        assert_eq!(t["etcd txn"], (0.5, 10));
    }

    #[test]
    fn means_cover_only_the_calls_between_snapshots() {
        let after = BEFORE
            .replace("pods\"} 0.01", "pods\"} 0.03")
            .replace("pods\"} 4", "pods\"} 14")
            + "skiff_apiserver_request_duration_seconds_sum{verb=\"get\",resource=\"pods\"} 0.002\n\
               skiff_apiserver_request_duration_seconds_count{verb=\"get\",resource=\"pods\"} 2\n";
        let calls = between(&totals(BEFORE), &totals(&after));
        assert_eq!(calls.len(), 2);
        assert_eq!(
            (calls[0].call.as_str(), calls[0].calls),
            ("create pods", 10)
        );
        assert!((calls[0].mean_ms - 2.0).abs() < 1e-9);
        assert_eq!((calls[1].call.as_str(), calls[1].calls), ("get pods", 2));
        assert!((calls[1].mean_ms - 1.0).abs() < 1e-9);
    }
}
