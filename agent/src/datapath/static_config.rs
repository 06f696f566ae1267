//! A services file for running the datapath on its own (without a control plane): which VIPs
//! to balance over which backends. Invalid files are refused whole, naming the bad field.
//!
//! ```yaml
//! services:
//!   - vip: 10.96.0.10
//!     port: 80
//!     protocol: TCP        # or UDP; TCP when left out
//!     backends: [10.244.1.2:8080, 10.244.1.3:8080]
//! ```

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
};

use serde::{Deserialize, Serialize};

use super::{Error, Protocol, Result, ServicePort, validate_backend};

/// Files larger than this are refused rather than read.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// The desired state: each service port and its backends.
pub type Desired = BTreeMap<ServicePort, Vec<SocketAddrV4>>;

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    services: Vec<Entry>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    vip: Ipv4Addr,
    port: u16,
    #[serde(default = "tcp")]
    protocol: Protocol,
    #[serde(default)]
    backends: Vec<SocketAddrV4>,
}

fn tcp() -> Protocol {
    Protocol::Tcp
}

/// Reads and validates a services file.
pub fn load(path: &Path) -> Result<Desired> {
    let bad = |reason: String| Error::StaticConfig {
        path: path.to_path_buf(),
        reason,
    };
    let len = fs::metadata(path)
        .map_err(|e| bad(format!("cannot read: {e}")))?
        .len();
    if len > MAX_FILE_BYTES {
        return Err(bad(format!(
            "{len} bytes is more than the {MAX_FILE_BYTES}-byte limit"
        )));
    }
    let text = fs::read_to_string(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    parse(&text).map_err(bad)
}

/// Parses and validates the text of a services file.
pub fn parse(text: &str) -> Result<Desired, String> {
    let file: File = if text.trim().is_empty() {
        File {
            services: Vec::new(),
        }
    } else {
        serde_norway::from_str(text).map_err(|e| e.to_string())?
    };
    let mut desired = Desired::new();
    for (i, e) in file.services.into_iter().enumerate() {
        let sp = ServicePort::new(e.vip, e.port, e.protocol);
        sp.validate().map_err(|r| format!("services[{i}]: {r}"))?;
        let mut seen = BTreeSet::new();
        for (j, b) in e.backends.iter().enumerate() {
            validate_backend(b).map_err(|r| format!("services[{i}].backends[{j}]: {r}"))?;
            if !seen.insert(*b) {
                return Err(format!("services[{i}].backends[{j}]: {b} is listed twice"));
            }
        }
        if desired.insert(sp, e.backends).is_some() {
            return Err(format!("services[{i}]: {sp} is defined twice"));
        }
    }
    Ok(desired)
}

/// Renders a desired state as a services file (what `parse` reads back).
pub fn render(desired: &Desired) -> String {
    let file = File {
        services: desired
            .iter()
            .map(|(sp, b)| Entry {
                vip: sp.vip,
                port: sp.port,
                protocol: sp.protocol,
                backends: b.clone(),
            })
            .collect(),
    };
    serde_norway::to_string(&file).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_file_parses_with_tcp_as_the_default_protocol() {
        let d = parse(
            "services:\n  - vip: 10.96.0.10\n    port: 80\n    backends: [10.244.1.2:8080]\n  \
             - vip: 10.96.0.10\n    port: 53\n    protocol: UDP\n    backends: []\n",
        )
        .unwrap();
        let web = ServicePort::new(Ipv4Addr::new(10, 96, 0, 10), 80, Protocol::Tcp);
        let dns = ServicePort::new(Ipv4Addr::new(10, 96, 0, 10), 53, Protocol::Udp);
        assert_eq!(d[&web], vec!["10.244.1.2:8080".parse().unwrap()]);
        assert!(d[&dns].is_empty());
    }

    #[test]
    fn rendering_and_parsing_round_trip() {
        let d = parse("services:\n  - {vip: 10.96.0.1, port: 443, backends: [10.0.0.1:8443]}\n")
            .unwrap();
        assert_eq!(parse(&render(&d)).unwrap(), d);
    }

    #[test]
    fn an_empty_file_means_no_services() {
        assert!(parse("").unwrap().is_empty());
        assert!(parse("services: []").unwrap().is_empty());
    }

    #[test]
    fn unknown_fields_are_refused_by_name() {
        let err = parse("services:\n  - {vip: 10.96.0.1, port: 80, sessionAffinity: ClientIP}\n")
            .unwrap_err();
        assert!(err.contains("sessionAffinity"), "{err}");
    }

    #[test]
    fn bad_values_name_the_entry() {
        for (text, needle) in [
            ("services:\n  - {vip: 10.96.0.1, port: 0}\n", "services[0]"),
            ("services:\n  - {vip: 10.96.0.1, port: 70000}\n", "70000"),
            (
                "services:\n  - {vip: 10.96.0.1, port: 80, protocol: SCTP}\n",
                "SCTP",
            ),
            ("services:\n  - {vip: not-an-ip, port: 80}\n", "vip"),
            (
                "services:\n  - {vip: 10.96.0.1, port: 80, backends: [10.0.0.1:0]}\n",
                "services[0].backends[0]",
            ),
            (
                "services:\n  - {vip: 10.96.0.1, port: 80, backends: [10.0.0.1:1, 10.0.0.1:1]}\n",
                "listed twice",
            ),
            (
                "services:\n  - {vip: 10.96.0.1, port: 80}\n  - {vip: 10.96.0.1, port: 80}\n",
                "defined twice",
            ),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(needle), "{text:?} gave {err:?}");
        }
    }

    #[test]
    fn an_oversized_file_is_refused_without_reading_it() {
        let dir = std::env::temp_dir().join(format!("skiff-static-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("big.yaml");
        let f = fs::File::create(&p).unwrap();
        f.set_len(MAX_FILE_BYTES + 1).unwrap();
        let err = load(&p).unwrap_err().to_string();
        fs::remove_dir_all(&dir).unwrap();
        assert!(err.contains("limit"), "{err}");
    }
}
