use std::collections::BTreeSet;

use super::{
    Errors, NameRule, PROTOCOLS, SCTP_UNSUPPORTED, Validate, dns1123_label, dns1123_subdomain,
    metadata, special_ipv4,
};
use crate::{
    kinds::{EndpointAddress, EndpointPort, Endpoints},
    object::FieldError,
};

// ---------------------------------------------------------------------------------------------
// Endpoints

fn endpoint_address(a: &EndpointAddress, path: &str, e: &mut Errors) {
    if let Some(ip) = e.ipv4(format!("{path}.ip"), &a.ip)
        && let Some(why) = special_ipv4(ip)
    {
        e.invalid(format!("{path}.ip"), &a.ip, why);
    }
    // Kubernetes gives a hostname meaning only through cluster DNS (a record under a headless
    // Service), which Skiff does not serve yet.
    if !a.hostname.is_empty() {
        e.forbidden(
            format!("{path}.hostname"),
            "endpoint hostnames are not supported yet: Skiff has no cluster DNS to answer for them",
        );
    }
    if let Some(node) = &a.node_name
        && !node.is_empty()
        && let Err(d) = dns1123_subdomain(node)
    {
        e.invalid(format!("{path}.nodeName"), node, d);
    }
}

fn endpoint_ports(ports: &[EndpointPort], path: &str, e: &mut Errors) {
    let mut names = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        let ppath = format!("{path}[{i}]");
        if p.name.is_empty() {
            if ports.len() > 1 {
                e.required(
                    format!("{ppath}.name"),
                    "a name is required when there is more than one port",
                );
            }
        } else if let Err(d) = dns1123_label(&p.name) {
            e.invalid(format!("{ppath}.name"), &p.name, d);
        } else if !names.insert(p.name.as_str()) {
            e.duplicate(format!("{ppath}.name"), &p.name);
        }
        e.port_number(format!("{ppath}.port"), p.port);
        e.one_of(
            format!("{ppath}.protocol"),
            &p.protocol,
            PROTOCOLS,
            SCTP_UNSUPPORTED,
        );
    }
}

impl Validate for Endpoints {
    fn validate(&self) -> Vec<FieldError> {
        let mut e = Errors::default();
        metadata(&self.metadata, NameRule::Subdomain, &mut e);
        for (i, s) in self.subsets.iter().enumerate() {
            let path = format!("subsets[{i}]");
            for (j, a) in s.addresses.iter().enumerate() {
                endpoint_address(a, &format!("{path}.addresses[{j}]"), &mut e);
            }
            for (j, a) in s.not_ready_addresses.iter().enumerate() {
                endpoint_address(a, &format!("{path}.notReadyAddresses[{j}]"), &mut e);
            }
            endpoint_ports(&s.ports, &format!("{path}.ports"), &mut e);
        }
        e.0
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::validate::test_util::*;

    // --- Endpoints -------------------------------------------------------------------------

    #[test]
    fn endpoint_addresses_are_ordinary_ipv4_addresses() {
        for (ip, why) in [
            ("10.244.1", "must be a valid IPv4 address"),
            ("fd00::5", "IPv6 is not supported"),
            ("127.0.0.1", "may not be in the loopback range"),
            ("169.254.169.254", "may not be in the link-local range"),
            ("0.0.0.0", "may not be unspecified"),
            ("224.0.0.1", "may not be a multicast address"),
        ] {
            let v = set(endpoints(), "/subsets/0/addresses/0/ip", json!(ip));
            assert_only(
                &check::<Endpoints>(v),
                &format!("subsets[0].addresses[0].ip: Invalid value: {ip:?}: {why}"),
            );
        }
        let v = set(endpoints(), "/subsets/0/notReadyAddresses/0/ip", json!("x"));
        assert_only(
            &check::<Endpoints>(v),
            "subsets[0].notReadyAddresses[0].ip: Invalid value: \"x\"",
        );
    }

    #[test]
    fn endpoint_node_names_are_dns_names() {
        let v = set(
            endpoints(),
            "/subsets/0/addresses/0/nodeName",
            json!("Node 1"),
        );
        assert_only(
            &check::<Endpoints>(v),
            "subsets[0].addresses[0].nodeName: Invalid value: \"Node 1\"",
        );
    }

    #[test]
    fn endpoint_hostnames_are_refused_until_cluster_dns_serves_them() {
        let v = set(
            endpoints(),
            "/subsets/0/addresses/0/hostname",
            json!("web-0"),
        );
        let v = set(v, "/subsets/0/notReadyAddresses/0/hostname", json!("web-1"));
        let errors = check::<Endpoints>(v);
        for path in [
            "subsets[0].addresses[0].hostname",
            "subsets[0].notReadyAddresses[0].hostname",
        ] {
            assert_has(
                &errors,
                &format!(
                    "{path}: Forbidden: endpoint hostnames are not supported yet: Skiff has no cluster DNS to answer for them"
                ),
            );
        }
        assert_eq!(errors.len(), 2, "{errors:#?}");
    }

    #[test]
    fn endpoint_ports_are_checked_and_named_uniquely_when_several() {
        let errors = check::<Endpoints>(set(endpoints(), "/subsets/0/ports/1/port", json!(0)));
        assert_only(
            &errors,
            "subsets[0].ports[1].port: Invalid value: 0: must be between 1 and 65535, inclusive",
        );
        let errors = check::<Endpoints>(set(
            endpoints(),
            "/subsets/0/ports/1/protocol",
            json!("SCTP"),
        ));
        assert_only(
            &errors,
            "subsets[0].ports[1].protocol: Unsupported value: \"SCTP\"",
        );
        let errors = check::<Endpoints>(set(endpoints(), "/subsets/0/ports/1/name", json!("http")));
        assert_only(
            &errors,
            "subsets[0].ports[1].name: Duplicate value: \"http\"",
        );
        let errors = check::<Endpoints>(remove(endpoints(), "/subsets/0/ports/1/name"));
        assert_only(&errors, "subsets[0].ports[1].name: Required value");
        let errors = check::<Endpoints>(set(
            endpoints(),
            "/subsets/0/ports/1/name",
            json!("Metrics"),
        ));
        assert_only(
            &errors,
            "subsets[0].ports[1].name: Invalid value: \"Metrics\"",
        );
        let single = set(endpoints(), "/subsets/0/ports", json!([{"port": 8080}]));
        assert_eq!(check::<Endpoints>(single), Vec::<String>::new());
    }
}
