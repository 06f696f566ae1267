use std::collections::BTreeSet;

use super::{
    Errors, IMMUTABLE, IPV6_UNSUPPORTED, NameRule, PROTOCOLS, SCTP_UNSUPPORTED, Validate,
    dns1123_label, metadata,
};
use crate::{
    kinds::{Service, ServicePort, ServiceSpec},
    meta::ObjectMeta,
    object::FieldError,
    selector::validate_label_key,
};

// ---------------------------------------------------------------------------------------------
// Services

fn service_spec(s: &ServiceSpec, e: &mut Errors) {
    e.one_of(
        "spec.type",
        &s.type_,
        &["ClusterIP", "NodePort"],
        &[
            (
                "LoadBalancer",
                "Skiff has no load balancer integration; use NodePort",
            ),
            (
                "ExternalName",
                "Skiff's cluster DNS does not serve ExternalName Services",
            ),
        ],
    );
    let node_port_type = s.type_ == "NodePort";
    let headless = s.cluster_ip == "None";
    if s.ports.is_empty() && !headless {
        e.required(
            "spec.ports",
            "a Service needs at least one port unless it is headless",
        );
    }
    let mut names = BTreeSet::new();
    let mut ports = BTreeSet::new();
    let mut node_ports = BTreeSet::new();
    for (i, p) in s.ports.iter().enumerate() {
        service_port(p, &format!("spec.ports[{i}]"), s, e);
        let path = format!("spec.ports[{i}]");
        if !p.name.is_empty() && !names.insert(p.name.as_str()) {
            e.duplicate(format!("{path}.name"), &p.name);
        }
        if !ports.insert((p.port, p.protocol.as_str())) {
            e.duplicate(path.clone(), format!("{}/{}", p.port, p.protocol));
        }
        if p.node_port != 0 && !node_ports.insert((p.node_port, p.protocol.as_str())) {
            e.duplicate(format!("{path}.nodePort"), p.node_port);
        }
    }
    match s.cluster_ip.as_str() {
        "" => {}
        "None" => {
            if node_port_type {
                e.invalid(
                    "spec.clusterIP",
                    &s.cluster_ip,
                    "may not be set to 'None' for NodePort services",
                );
            }
        }
        ip => {
            e.ipv4("spec.clusterIP", ip);
        }
    }
    if let Some(first) = s.cluster_ips.first()
        && *first != s.cluster_ip
    {
        e.invalid(
            "spec.clusterIPs[0]",
            first,
            format!("must match spec.clusterIP ({:?})", s.cluster_ip),
        );
    }
    if s.cluster_ips.len() > 1 {
        e.too_many(
            "spec.clusterIPs",
            s.cluster_ips.len(),
            1,
            "Skiff is IPv4 single-stack",
        );
    }
    for (i, ip) in s.cluster_ips.iter().enumerate().skip(1) {
        if ip != "None" {
            e.ipv4(format!("spec.clusterIPs[{i}]"), ip);
        }
    }
    e.one_of(
        "spec.sessionAffinity",
        &s.session_affinity,
        &["None", "ClientIP"],
        &[],
    );
    if s.session_affinity == "ClientIP" {
        let timeout = s
            .session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds);
        let path = "spec.sessionAffinityConfig.clientIP.timeoutSeconds";
        match timeout {
            None => e.required(path, ""),
            Some(t) if !(1..=86_400).contains(&t) => e.invalid(
                path,
                t,
                "must be greater than 0 and less than or equal to 86400",
            ),
            Some(_) => {}
        }
    } else if s.session_affinity_config.is_some() {
        e.forbidden(
            "spec.sessionAffinityConfig",
            "may only be set when sessionAffinity is ClientIP",
        );
    }
    // Both policies' Local is served by the agent's proxy: only the node's own endpoints, and
    // for NodePorts the client's address kept.
    if !s.external_traffic_policy.is_empty() {
        if s.type_ == "ClusterIP" {
            e.invalid(
                "spec.externalTrafficPolicy",
                &s.external_traffic_policy,
                "may only be set for NodePort services",
            );
        } else {
            e.one_of(
                "spec.externalTrafficPolicy",
                &s.external_traffic_policy,
                &["Cluster", "Local"],
                &[],
            );
        }
    }
    if !s.internal_traffic_policy.is_empty() {
        e.one_of(
            "spec.internalTrafficPolicy",
            &s.internal_traffic_policy,
            &["Cluster", "Local"],
            &[],
        );
    }
    for (i, family) in s.ip_families.iter().enumerate() {
        if family != "IPv4" {
            e.unsupported(
                format!("spec.ipFamilies[{i}]"),
                family,
                &["IPv4"],
                &[("IPv6", IPV6_UNSUPPORTED)],
            );
        }
    }
    if s.ip_families.len() > 1 {
        e.too_many(
            "spec.ipFamilies",
            s.ip_families.len(),
            1,
            "Skiff is IPv4 single-stack",
        );
    }
    if !s.ip_family_policy.is_empty() && s.ip_family_policy != "SingleStack" {
        let note = "Skiff is IPv4 single-stack";
        e.unsupported(
            "spec.ipFamilyPolicy",
            &s.ip_family_policy,
            &["SingleStack"],
            &[("PreferDualStack", note), ("RequireDualStack", note)],
        );
    }
    e.labels("spec.selector", &s.selector);
}

fn service_port(p: &ServicePort, path: &str, s: &ServiceSpec, e: &mut Errors) {
    if p.name.is_empty() {
        if s.ports.len() > 1 {
            e.required(
                format!("{path}.name"),
                "a name is required when a Service has more than one port",
            );
        }
    } else if let Err(d) = dns1123_label(&p.name) {
        e.invalid(format!("{path}.name"), &p.name, d);
    }
    e.port_number(format!("{path}.port"), p.port);
    e.one_of(
        format!("{path}.protocol"),
        &p.protocol,
        PROTOCOLS,
        SCTP_UNSUPPORTED,
    );
    if let Some(t) = &p.target_port {
        e.port_number_or_name(format!("{path}.targetPort"), t);
    }
    // Informational (`http`, `kubernetes.io/h2c`, `example.com/proto`): a qualified name.
    if let Some(a) = &p.app_protocol
        && let Err(d) = validate_label_key(a)
    {
        e.invalid(format!("{path}.appProtocol"), a, d);
    }
    // An unsupported type is reported once, at spec.type, not again for each node port.
    match (p.node_port, s.type_.as_str()) {
        (0, _) => {}
        (_, "NodePort") => e.port_number(format!("{path}.nodePort"), p.node_port),
        (_, "ClusterIP") => e.forbidden(
            format!("{path}.nodePort"),
            "may not be used when type is \"ClusterIP\"",
        ),
        _ => {}
    }
}

/// Skiff's own annotations on a Service.
fn service_annotations(meta: &ObjectMeta, e: &mut Errors) {
    let key = crate::kinds::MAGLEV_TABLE_SIZE_ANNOTATION;
    if let Some(v) = meta.annotations.get(key)
        && let Err(why) = crate::kinds::maglev_table_size(v)
    {
        e.invalid(format!("metadata.annotations[{key}]"), v, why);
    }
}

impl Validate for Service {
    fn validate(&self) -> Vec<FieldError> {
        let mut e = Errors::default();
        metadata(&self.metadata, NameRule::Rfc1035Label, &mut e);
        service_annotations(&self.metadata, &mut e);
        service_spec(&self.spec, &mut e);
        e.0
    }

    fn update_rules(&self, old: &Self) -> Vec<FieldError> {
        let mut e = Errors::default();
        service_annotations(&self.metadata, &mut e);
        let (new, old) = (&self.spec, &old.spec);
        if !old.cluster_ip.is_empty() && new.cluster_ip != old.cluster_ip {
            e.invalid("spec.clusterIP", &new.cluster_ip, IMMUTABLE);
        }
        // Left empty, clusterIPs is filled from clusterIP when the address is assigned.
        if !old.cluster_ips.is_empty()
            && !new.cluster_ips.is_empty()
            && new.cluster_ips != old.cluster_ips
        {
            e.invalid("spec.clusterIPs", &new.cluster_ips, IMMUTABLE);
        }
        e.0
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::validate::test_util::*;

    // --- Services --------------------------------------------------------------------------

    fn svc_errors(v: Value) -> Vec<String> {
        check::<Service>(v)
    }

    #[test]
    fn load_balancer_and_external_name_services_are_unsupported_and_say_why() {
        let errors = svc_errors(set(service(), "/spec/type", json!("LoadBalancer")));
        assert_only(
            &errors,
            "spec.type: Unsupported value: \"LoadBalancer\": supported values: \"ClusterIP\", \"NodePort\"; Skiff has no load balancer integration",
        );
        let errors = svc_errors(set(service(), "/spec/type", json!("ExternalName")));
        assert_only(&errors, "does not serve ExternalName Services");
    }

    #[test]
    fn an_unsupported_type_is_reported_once_not_again_for_its_node_ports() {
        let v = set(service(), "/spec/type", json!("LoadBalancer"));
        let v = set(v, "/spec/ports/0/nodePort", json!(30080));
        assert_only(
            &svc_errors(v.clone()),
            "spec.type: Unsupported value: \"LoadBalancer\"",
        );
        // Local is a supported policy: only the type is refused.
        let errors = svc_errors(set(v, "/spec/externalTrafficPolicy", json!("Local")));
        assert_only(&errors, "spec.type: Unsupported value: \"LoadBalancer\"");
    }

    #[test]
    fn ports_are_required_unless_the_service_is_headless() {
        let errors = svc_errors(set(service(), "/spec/ports", json!([])));
        assert_only(&errors, "spec.ports: Required value");
        let v = set(
            set(service(), "/spec/ports", json!([])),
            "/spec/clusterIP",
            json!("None"),
        );
        assert_eq!(svc_errors(v), Vec::<String>::new());
    }

    #[test]
    fn service_port_names_are_required_with_several_ports_and_must_be_unique_labels() {
        let errors = svc_errors(remove(service(), "/spec/ports/1/name"));
        assert_only(&errors, "spec.ports[1].name: Required value");
        let errors = svc_errors(set(service(), "/spec/ports/1/name", json!("http")));
        assert_only(&errors, "spec.ports[1].name: Duplicate value: \"http\"");
        let errors = svc_errors(set(service(), "/spec/ports/1/name", json!("Metrics")));
        assert_only(&errors, "spec.ports[1].name: Invalid value: \"Metrics\"");
        let single = set(service(), "/spec/ports", json!([{"port": 80}]));
        assert_eq!(svc_errors(single), Vec::<String>::new());
    }

    #[test]
    fn duplicate_service_port_and_protocol_is_refused_but_tcp_and_udp_may_share() {
        let errors = svc_errors(set(service(), "/spec/ports/1/port", json!(80)));
        assert_only(&errors, "spec.ports[1]: Duplicate value: \"80/TCP\"");
        let v = set(
            set(service(), "/spec/ports/1/port", json!(80)),
            "/spec/ports/1/protocol",
            json!("UDP"),
        );
        assert_eq!(svc_errors(v), Vec::<String>::new());
    }

    #[test]
    fn service_port_numbers_and_protocols_are_checked() {
        let errors = svc_errors(set(service(), "/spec/ports/0/port", json!(0)));
        assert_has(
            &errors,
            "spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive",
        );
        let errors = svc_errors(set(service(), "/spec/ports/0/protocol", json!("SCTP")));
        assert_only(
            &errors,
            "spec.ports[0].protocol: Unsupported value: \"SCTP\"",
        );
    }

    #[test]
    fn app_protocol_is_a_qualified_name_kept_as_given() {
        for ok in [
            "http",
            "kubernetes.io/h2c",
            "example.com/custom-proto",
            "HTTP2",
        ] {
            let v = set(service(), "/spec/ports/0/appProtocol", json!(ok));
            assert_eq!(svc_errors(v.clone()), Vec::<String>::new(), "{ok}");
            let s: Service = decode(v);
            assert_eq!(s.spec.ports[0].app_protocol.as_deref(), Some(ok));
        }
        for bad in ["", "h2 c", "a/b/c", "-http"] {
            let v = set(service(), "/spec/ports/0/appProtocol", json!(bad));
            assert_only(
                &svc_errors(v),
                &format!("spec.ports[0].appProtocol: Invalid value: {bad:?}"),
            );
        }
    }

    #[test]
    fn target_port_is_a_number_in_range_or_a_port_name() {
        let errors = svc_errors(set(service(), "/spec/ports/1/targetPort", json!(70000)));
        assert_only(
            &errors,
            "spec.ports[1].targetPort: Invalid value: 70000: must be between 1 and 65535, inclusive",
        );
        let errors = svc_errors(set(
            service(),
            "/spec/ports/1/targetPort",
            json!("metrics_port"),
        ));
        assert_only(
            &errors,
            "spec.ports[1].targetPort: Invalid value: \"metrics_port\"",
        );
    }

    #[test]
    fn node_port_is_forbidden_on_cluster_ip_services() {
        let errors = svc_errors(set(service(), "/spec/ports/0/nodePort", json!(30080)));
        assert_only(
            &errors,
            "spec.ports[0].nodePort: Forbidden: may not be used when type is \"ClusterIP\"",
        );
    }

    #[test]
    fn node_ports_are_in_range_and_unique_per_protocol() {
        let v = set(service(), "/spec/type", json!("NodePort"));
        let v = set(v, "/spec/ports/0/nodePort", json!(30080));
        assert_eq!(svc_errors(v.clone()), Vec::<String>::new());
        let errors = svc_errors(set(v.clone(), "/spec/ports/1/nodePort", json!(30080)));
        assert_only(&errors, "spec.ports[1].nodePort: Duplicate value: 30080");
        let errors = svc_errors(set(v, "/spec/ports/1/nodePort", json!(70000)));
        assert_only(&errors, "spec.ports[1].nodePort: Invalid value: 70000");
    }

    #[test]
    fn cluster_ip_is_empty_none_or_an_ipv4_address() {
        for ok in ["", "None", "10.96.0.10"] {
            let v = set(service(), "/spec/clusterIP", json!(ok));
            assert_eq!(svc_errors(v), Vec::<String>::new(), "{ok}");
        }
        let errors = svc_errors(set(service(), "/spec/clusterIP", json!("10.96.0.300")));
        assert_only(
            &errors,
            "spec.clusterIP: Invalid value: \"10.96.0.300\": must be a valid IPv4 address",
        );
        let errors = svc_errors(set(service(), "/spec/clusterIP", json!("fd00::10")));
        assert_only(
            &errors,
            "spec.clusterIP: Invalid value: \"fd00::10\": IPv6 is not supported",
        );
    }

    #[test]
    fn headless_node_port_services_are_refused() {
        let v = set(
            set(service(), "/spec/type", json!("NodePort")),
            "/spec/clusterIP",
            json!("None"),
        );
        assert_only(
            &svc_errors(v),
            "spec.clusterIP: Invalid value: \"None\": may not be set to 'None' for NodePort services",
        );
    }

    #[test]
    fn cluster_ips_must_start_with_cluster_ip_and_hold_one_address() {
        let v = set(service(), "/spec/clusterIP", json!("10.96.0.10"));
        assert_eq!(
            svc_errors(set(v.clone(), "/spec/clusterIPs", json!(["10.96.0.10"]))),
            Vec::<String>::new()
        );
        let errors = svc_errors(set(v.clone(), "/spec/clusterIPs", json!(["10.96.0.11"])));
        assert_only(
            &errors,
            "spec.clusterIPs[0]: Invalid value: \"10.96.0.11\": must match spec.clusterIP",
        );
        let errors = svc_errors(set(
            v,
            "/spec/clusterIPs",
            json!(["10.96.0.10", "fd00::10"]),
        ));
        assert_has(
            &errors,
            "spec.clusterIPs: Too many: 2: must have at most 1 items",
        );
        assert_has(
            &errors,
            "spec.clusterIPs[1]: Invalid value: \"fd00::10\": IPv6 is not supported",
        );
    }

    #[test]
    fn session_affinity_config_only_with_client_ip_and_a_sane_timeout() {
        let errors = svc_errors(set(service(), "/spec/sessionAffinity", json!("Cookie")));
        assert_only(
            &errors,
            "spec.sessionAffinity: Unsupported value: \"Cookie\": supported values: \"None\", \"ClientIP\"",
        );
        let v = set(
            service(),
            "/spec/sessionAffinityConfig",
            json!({"clientIP": {"timeoutSeconds": 60}}),
        );
        assert_only(
            &svc_errors(v),
            "spec.sessionAffinityConfig: Forbidden: may only be set when sessionAffinity is ClientIP",
        );
        let v = set(service(), "/spec/sessionAffinity", json!("ClientIP"));
        assert_eq!(svc_errors(v.clone()), Vec::<String>::new());
        for bad in [0, 86_401] {
            let v = set(
                v.clone(),
                "/spec/sessionAffinityConfig",
                json!({"clientIP": {"timeoutSeconds": bad}}),
            );
            assert_only(
                &svc_errors(v),
                &format!(
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds: Invalid value: {bad}: must be greater than 0 and less than or equal to 86400"
                ),
            );
        }
    }

    #[test]
    fn the_maglev_table_size_annotation_must_be_a_prime_in_range() {
        for (value, why) in [
            ("1000", "must be a prime"),
            ("13", "must be between 251 and 131071"),
            ("big", "must be a whole number"),
        ] {
            let v = set(
                service(),
                "/metadata/annotations",
                json!({"skiff.io/maglev-table-size": value}),
            );
            let errors = svc_errors(v);
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert!(
                errors[0].starts_with(&format!(
                    "metadata.annotations[skiff.io/maglev-table-size]: Invalid value: \"{value}\""
                )) && errors[0].contains(why),
                "{errors:?}"
            );
        }
        let v = set(
            service(),
            "/metadata/annotations",
            json!({"skiff.io/maglev-table-size": "1021"}),
        );
        assert!(svc_errors(v).is_empty());
    }

    #[test]
    fn external_traffic_policy_is_only_for_node_port_services() {
        for policy in ["Cluster", "Local"] {
            let errors = svc_errors(set(service(), "/spec/externalTrafficPolicy", json!(policy)));
            assert_only(
                &errors,
                &format!(
                    "spec.externalTrafficPolicy: Invalid value: {policy:?}: may only be set for NodePort services"
                ),
            );
        }
        let v = set(service(), "/spec/type", json!("NodePort"));
        let errors = svc_errors(set(v, "/spec/externalTrafficPolicy", json!("Anywhere")));
        assert_only(
            &errors,
            "spec.externalTrafficPolicy: Unsupported value: \"Anywhere\": supported values: \"Cluster\"",
        );
    }

    #[test]
    fn node_port_services_get_external_and_internal_policy_cluster_and_pass() {
        let v = set(service(), "/spec/type", json!("NodePort"));
        let svc = decode::<Service>(v.clone());
        assert_eq!(svc.spec.external_traffic_policy, "Cluster");
        assert_eq!(svc.spec.internal_traffic_policy, "Cluster");
        assert_eq!(svc_errors(v.clone()), Vec::<String>::new());
        let v = set(v, "/spec/externalTrafficPolicy", json!("Cluster"));
        let v = set(v, "/spec/internalTrafficPolicy", json!("Cluster"));
        assert_eq!(svc_errors(v), Vec::<String>::new());
    }

    #[test]
    fn external_traffic_policy_local_is_accepted_for_node_port_services() {
        let v = set(service(), "/spec/type", json!("NodePort"));
        let errors = svc_errors(set(v, "/spec/externalTrafficPolicy", json!("Local")));
        assert_eq!(errors, Vec::<String>::new());
        let errors = svc_errors(set(
            service(),
            "/spec/externalTrafficPolicy",
            json!("Local"),
        ));
        assert_only(
            &errors,
            "spec.externalTrafficPolicy: Invalid value: \"Local\": may only be set for NodePort services",
        );
    }

    #[test]
    fn internal_traffic_policy_local_is_accepted_and_other_values_are_not() {
        for type_ in ["ClusterIP", "NodePort"] {
            let v = set(service(), "/spec/type", json!(type_));
            let errors = svc_errors(set(v, "/spec/internalTrafficPolicy", json!("Local")));
            assert_eq!(errors, Vec::<String>::new(), "{type_}");
        }
        let errors = svc_errors(set(service(), "/spec/internalTrafficPolicy", json!("Node")));
        assert_only(
            &errors,
            "spec.internalTrafficPolicy: Unsupported value: \"Node\": supported values: \"Cluster\", \"Local\"",
        );
    }

    #[test]
    fn only_single_stack_ipv4_is_supported() {
        let errors = svc_errors(set(service(), "/spec/ipFamilies", json!(["IPv6"])));
        assert_only(
            &errors,
            "spec.ipFamilies[0]: Unsupported value: \"IPv6\": supported values: \"IPv4\"; IPv6 is not supported",
        );
        let errors = svc_errors(set(service(), "/spec/ipFamilies", json!(["IPv4", "IPv4"])));
        assert_only(&errors, "spec.ipFamilies: Too many: 2");
        let errors = svc_errors(set(
            service(),
            "/spec/ipFamilyPolicy",
            json!("PreferDualStack"),
        ));
        assert_only(
            &errors,
            "spec.ipFamilyPolicy: Unsupported value: \"PreferDualStack\": supported values: \"SingleStack\"; Skiff is IPv4 single-stack",
        );
    }

    #[test]
    fn service_selector_follows_label_syntax() {
        let errors = svc_errors(set(
            service(),
            "/spec/selector",
            json!({"app": "web server"}),
        ));
        assert_only(&errors, "spec.selector[app]: Invalid value: \"web server\"");
    }

    #[test]
    fn service_cluster_ip_is_immutable_once_set_but_type_may_change() {
        let old = set(service(), "/spec/clusterIP", json!("10.96.0.10"));
        let errors = update_errors::<Service>(
            set(old.clone(), "/spec/clusterIP", json!("10.96.0.11")),
            old.clone(),
        );
        assert_only(
            &errors,
            "spec.clusterIP: Invalid value: \"10.96.0.11\": field is immutable",
        );
        let errors = update_errors::<Service>(
            set(old.clone(), "/spec/clusterIP", json!("None")),
            old.clone(),
        );
        assert_only(
            &errors,
            "spec.clusterIP: Invalid value: \"None\": field is immutable",
        );
        let headless = set(service(), "/spec/clusterIP", json!("None"));
        let errors = update_errors::<Service>(old.clone(), headless);
        assert_only(
            &errors,
            "spec.clusterIP: Invalid value: \"10.96.0.10\": field is immutable",
        );
        assert_eq!(
            update_errors::<Service>(old.clone(), service()),
            Vec::<String>::new()
        );
        let node_port = set(old.clone(), "/spec/type", json!("NodePort"));
        assert_eq!(
            update_errors::<Service>(node_port, old.clone()),
            Vec::<String>::new()
        );
    }

    #[test]
    fn service_update_naming_only_cluster_ip_keeps_the_stored_cluster_ips() {
        let old = set(service(), "/spec/clusterIP", json!("10.96.0.10"));
        // As stored: the allocator filled clusterIPs in after validation.
        let stored = set(old.clone(), "/spec/clusterIPs", json!(["10.96.0.10"]));
        assert_eq!(
            update_errors::<Service>(old.clone(), stored.clone()),
            Vec::<String>::new()
        );
        let grown = set(old, "/spec/clusterIPs", json!(["10.96.0.10", "10.96.0.11"]));
        assert_has(
            &update_errors::<Service>(grown, stored),
            "spec.clusterIPs: Invalid value: [\"10.96.0.10\", \"10.96.0.11\"]: field is immutable",
        );
    }
}
