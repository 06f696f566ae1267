//! Manifests as users write them, through the public API: real Kubernetes manifests are accepted
//! unchanged, and bad ones are refused with an error that names the field and the problem.

use skiff_api::{Object, manifest};

// ---------------------------------------------------------------------------------------------
// Helpers

/// Parses a manifest that must be accepted, defaults every object and checks it is valid.
#[track_caller]
fn accept(text: &[u8]) -> Vec<Object> {
    let objects = match manifest::parse(text) {
        Ok(objects) => objects,
        Err(e) => panic!("the manifest was refused: {e}"),
    };
    for object in &objects {
        // The API's own encoding decodes back to the same object.
        let again = Object::from_json(&object.to_json()).expect("re-decodes");
        assert_eq!(&again, object);
        let mut object = object.clone();
        object.apply_defaults();
        let errors = object.validate();
        assert!(
            errors.is_empty(),
            "{} {} is invalid: {errors:#?}",
            object.info().kind,
            object.key()
        );
    }
    objects
}

fn kinds(objects: &[Object]) -> Vec<&'static str> {
    objects.iter().map(|o| o.info().kind).collect()
}

/// Parses one object from YAML, defaults it and returns its validation errors.
#[track_caller]
fn validation_errors(yaml: &str) -> Vec<String> {
    let mut objects = manifest::parse(yaml.as_bytes()).expect("decodes");
    assert_eq!(objects.len(), 1);
    let mut object = objects.remove(0);
    object.apply_defaults();
    object.validate().iter().map(ToString::to_string).collect()
}

/// Decodes, defaults and checks `new` as an update of `old`.
#[track_caller]
fn update_errors(new: &str, old: &str) -> Vec<String> {
    let decode = |text: &str| {
        let mut o = manifest::parse(text.as_bytes()).expect("decodes").remove(0);
        o.apply_defaults();
        o
    };
    let (new, old) = (decode(new), decode(old));
    let mut errors = new.validate();
    errors.extend(new.validate_update(&old));
    errors.iter().map(ToString::to_string).collect()
}

const NAMESPACE: &str = include_str!("fixtures/namespace.yaml");
const DEPLOYMENT: &str = include_str!("fixtures/deployment.yaml");
const SERVICE: &str = include_str!("fixtures/service.yaml");
const NODE_PORT_SERVICE: &str = include_str!("fixtures/service-nodeport.yaml");
const POD: &str = include_str!("fixtures/pod.yaml");
const REPLICA_SET: &str = include_str!("fixtures/replicaset.yaml");
const ALL_YAML: &str = include_str!("fixtures/all.yaml");
const ALL_JSON: &str = include_str!("fixtures/all.json");
const LIST: &str = include_str!("fixtures/list.yaml");

const ALL_KINDS: [&str; 6] = [
    "Namespace",
    "Deployment",
    "Service",
    "Service",
    "Pod",
    "ReplicaSet",
];

/// `text` with the first occurrence of `from` replaced, failing loudly if it is not there (so a
/// fixture edit cannot silently turn a bad-manifest case into a copy of the good one).
#[track_caller]
fn replace(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from:?} is not in the manifest");
    text.replacen(from, to, 1)
}

// ---------------------------------------------------------------------------------------------
// Real manifests are accepted

#[test]
fn typical_apps_v1_deployment_is_accepted_and_valid() {
    let objects = accept(DEPLOYMENT.as_bytes());
    let Some(Object::Deployment(d)) = objects.first() else {
        panic!("expected a Deployment, got {objects:?}");
    };
    let c = &d.spec.template.spec.containers[0];
    assert_eq!(c.resources.requests["cpu"].milli_value(), 250);
    assert_eq!(c.resources.limits["memory"].value(), 128 << 20);
    assert_eq!(c.ports[0].name, "http");
}

#[test]
fn service_with_a_named_target_port_is_accepted_and_valid() {
    assert_eq!(kinds(&accept(SERVICE.as_bytes())), ["Service"]);
}

#[test]
fn node_port_service_is_accepted_and_valid() {
    assert_eq!(kinds(&accept(NODE_PORT_SERVICE.as_bytes())), ["Service"]);
}

#[test]
fn namespace_pod_and_replica_set_are_accepted_and_valid() {
    assert_eq!(kinds(&accept(NAMESPACE.as_bytes())), ["Namespace"]);
    assert_eq!(kinds(&accept(POD.as_bytes())), ["Pod"]);
    assert_eq!(kinds(&accept(REPLICA_SET.as_bytes())), ["ReplicaSet"]);
}

#[test]
fn multi_document_yaml_with_comments_and_empty_documents_is_accepted() {
    assert_eq!(kinds(&accept(ALL_YAML.as_bytes())), ALL_KINDS);
}

#[test]
fn the_same_objects_as_json_are_accepted_and_equal() {
    let from_json = accept(ALL_JSON.as_bytes());
    assert_eq!(kinds(&from_json), ALL_KINDS);
    assert_eq!(from_json, accept(ALL_YAML.as_bytes()));
    // Each object on its own, as an API request carries it.
    let values: Vec<serde_json::Value> = serde_json::from_str(ALL_JSON).expect("JSON");
    for (value, expected) in values.iter().zip(&from_json) {
        let bytes = serde_json::to_vec(value).expect("encodes");
        let object = Object::from_json(&bytes).expect("decodes");
        assert_eq!(&object, expected);
    }
    // A stream of JSON objects, as `kubectl get -o json` prints them one after another.
    let stream: String = values.iter().map(|v| format!("{v}\n")).collect();
    assert_eq!(accept(stream.as_bytes()), from_json);
}

#[test]
fn kind_list_is_accepted_item_by_item() {
    let objects = accept(LIST.as_bytes());
    assert_eq!(kinds(&objects), ALL_KINDS);
    assert_eq!(objects, accept(ALL_YAML.as_bytes()));
}

// ---------------------------------------------------------------------------------------------
// Bad manifests are refused, each with its specific error

/// What a bad manifest must produce.
enum Expect {
    /// `manifest::parse` fails; its Display contains every phrase.
    Decode(&'static [&'static str]),
    /// It decodes, but after defaults `validate()` reports errors whose joined Display contains
    /// every phrase.
    Invalid(&'static [&'static str]),
}

struct Case {
    name: &'static str,
    manifest: Vec<u8>,
    expect: Expect,
}

fn case(name: &'static str, manifest: impl Into<Vec<u8>>, expect: Expect) -> Case {
    Case {
        name,
        manifest: manifest.into(),
        expect,
    }
}

fn bad_manifests() -> Vec<Case> {
    use Expect::{Decode, Invalid};
    let deep_json = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let deep_yaml_flow = format!("kind: Pod\nx: {}", "[".repeat(10_000));
    let deep_yaml_block: String = (0..5_000)
        .map(|depth| format!("{}k:\n", " ".repeat(depth)))
        .collect();
    // Each alias doubles the one before: expanded, the last would be 2^40 strings.
    let mut laughs = String::from("a: &a [\"lol\",\"lol\"]\n");
    for i in 1..40 {
        laughs.push_str(&format!(
            "a{i}: &a{i} [*{p},*{p}]\n",
            p = if i == 1 {
                "a".to_owned()
            } else {
                format!("a{}", i - 1)
            }
        ));
    }
    let huge_annotation = replace(
        NAMESPACE,
        "  labels:",
        &format!(
            "  annotations:\n    note: \"{}\"\n  labels:",
            "x".repeat(1_600_000)
        ),
    );
    let big_annotation = replace(
        NAMESPACE,
        "  labels:",
        &format!(
            "  annotations:\n    note: \"{}\"\n  labels:",
            "x".repeat(300 * 1024)
        ),
    );
    let mut not_utf8 = NAMESPACE.as_bytes().to_vec();
    not_utf8.extend_from_slice(b"    extra: \xff\xfe\n");
    vec![
        // --- Decoding: types and unknown fields
        case(
            "wrong type: replicas as a word",
            replace(DEPLOYMENT, "replicas: 3", "replicas: three"),
            Decode(&[
                "document 1 (Deployment web)",
                "spec.replicas",
                "invalid type: string \"three\"",
            ]),
        ),
        case(
            "replicas beyond i32",
            replace(DEPLOYMENT, "replicas: 3", "replicas: 9999999999"),
            Decode(&["spec.replicas", "invalid value: integer `9999999999`"]),
        ),
        case(
            "labels as a list",
            replace(NAMESPACE, "    team: storefront", "    - storefront"),
            Decode(&["metadata.labels", "invalid type: sequence, expected a map"]),
        ),
        case(
            "unknown top-level field",
            format!("{NAMESPACE}extra: true\n"),
            Decode(&["unknown field `extra`"]),
        ),
        case(
            "unknown nested field in a container",
            replace(
                DEPLOYMENT,
                "          imagePullPolicy: IfNotPresent",
                "          imagePullSecret: registry",
            ),
            Decode(&[
                "spec.template.spec.containers[0]",
                "unknown field `imagePullSecret`",
            ]),
        ),
        case(
            "a Kubernetes volume source Skiff does not support is refused by name",
            replace(
                DEPLOYMENT,
                "      terminationGracePeriodSeconds: 20",
                "      volumes:\n      - name: data\n        persistentVolumeClaim: {claimName: data}",
            ),
            Invalid(&[
                "spec.template.spec.volumes[0].persistentVolumeClaim: Forbidden",
                "Skiff does not support persistentVolumeClaim volumes yet",
            ]),
        ),
        case(
            "a volume source that is no Kubernetes field is an unknown field",
            replace(
                DEPLOYMENT,
                "      terminationGracePeriodSeconds: 20",
                "      volumes:\n      - name: data\n        emptydir: {}",
            ),
            Decode(&["spec.template.spec.volumes[0]", "unknown field `emptydir`"]),
        ),
        case(
            "hostNetwork is not supported",
            replace(POD, "  restartPolicy: Never", "  hostNetwork: true"),
            Decode(&["spec", "unknown field `hostNetwork`"]),
        ),
        // --- Decoding: quantities
        case(
            "quantity with an unknown suffix",
            replace(DEPLOYMENT, "memory: 64Mi", "memory: 12x"),
            Decode(&[
                "resources.requests",
                "invalid quantity \"12x\"",
                "\"x\" is not a known suffix",
            ]),
        ),
        case(
            "quantity with two dots",
            replace(DEPLOYMENT, "memory: 64Mi", "memory: 1.2.3Gi"),
            Decode(&["resources.requests", "invalid quantity \"1.2.3Gi\""]),
        ),
        // --- Decoding: kind and apiVersion
        case(
            "missing kind",
            replace(NAMESPACE, "kind: Namespace\n", ""),
            Decode(&["document 1", "kind: Required value"]),
        ),
        case(
            "empty kind",
            replace(NAMESPACE, "kind: Namespace", "kind: \"\""),
            Decode(&["kind: Required value"]),
        ),
        case(
            "kind that is not a string",
            replace(NAMESPACE, "kind: Namespace", "kind: 5"),
            Decode(&["kind: invalid type: a number, expected a string"]),
        ),
        case(
            "missing apiVersion",
            replace(NAMESPACE, "apiVersion: v1\n", ""),
            Decode(&["apiVersion: Required value: Namespace is v1"]),
        ),
        case(
            "Deployment with apiVersion v1",
            replace(DEPLOYMENT, "apiVersion: apps/v1", "apiVersion: v1"),
            Decode(&["apiVersion: Unsupported value: \"v1\": Deployment is served as apps/v1"]),
        ),
        case(
            "Pod with apiVersion apps/v1",
            replace(POD, "apiVersion: v1", "apiVersion: apps/v1"),
            Decode(&["apiVersion: Unsupported value: \"apps/v1\": Pod is served as v1"]),
        ),
        case(
            "unknown kind",
            replace(NAMESPACE, "kind: Namespace", "kind: CronJob"),
            Decode(&["kind: Unsupported value: \"CronJob\": supported kinds are"]),
        ),
        case(
            "a document that is a list rather than a mapping",
            "- a\n- b\n",
            Decode(&["must be a mapping", "not a list"]),
        ),
        // --- Decoding: bytes and syntax
        case(
            "non-UTF-8 bytes",
            not_utf8,
            Decode(&["not UTF-8 text", "offset"]),
        ),
        case(
            "JSON syntax error",
            "{\"apiVersion\": \"v1\", \"kind\": \"Namespace\",}",
            Decode(&["not valid JSON", "trailing comma"]),
        ),
        case(
            "YAML syntax error",
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: [shop\n",
            Decode(&["not valid YAML"]),
        ),
        case(
            "YAML with a tab for indentation",
            "apiVersion: v1\nkind: Namespace\nmetadata:\n\tname: shop\n",
            Decode(&["not valid YAML"]),
        ),
        // --- Hostile input: errors, not crashes
        case(
            "10,000 nested JSON lists",
            deep_json,
            Decode(&["not valid JSON", "recursion limit exceeded"]),
        ),
        case(
            "10,000 nested YAML flow lists",
            deep_yaml_flow,
            Decode(&["not valid YAML", "recursion limit exceeded"]),
        ),
        case(
            "5,000 nested YAML block mappings",
            deep_yaml_block,
            Decode(&["not valid YAML", "recursion limit exceeded"]),
        ),
        case(
            "YAML alias bomb (billion laughs)",
            laughs,
            Decode(&["not valid YAML", "repetition limit exceeded"]),
        ),
        case(
            "object over the size limit",
            huge_annotation,
            Decode(&["document 1 (Namespace shop)", "the limit is 1564672 bytes"]),
        ),
        // --- Multi-document: the failing document is named by position
        case(
            "second document is bad",
            format!(
                "{NAMESPACE}---\n{}",
                replace(SERVICE, "kind: Service", "kind: Servce")
            ),
            Decode(&[
                "document 2 (Servce web)",
                "kind: Unsupported value: \"Servce\"",
            ]),
        ),
        case(
            "third JSON document is bad",
            concat!(
                r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"a"}}"#,
                "\n",
                r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"b"}}"#,
                "\n",
                r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"c","bogus":1}}"#,
            ),
            Decode(&[
                "document 3 (Namespace c)",
                "metadata",
                "unknown field `bogus`",
            ]),
        ),
        case(
            "second item of a JSON list is bad",
            "[{\"apiVersion\":\"v1\",\"kind\":\"Namespace\",\"metadata\":{\"name\":\"a\"}},{\"apiVersion\":\"v1\",\"kind\":\"Namespace\",\"metadata\":{\"name\":\"b\"},\"x\":1}]",
            Decode(&["document 2 (Namespace b)", "unknown field `x`"]),
        ),
        // --- Decoded but invalid: names and labels
        case(
            "upper-case name",
            replace(DEPLOYMENT, "  name: web\n", "  name: Web\n"),
            Invalid(&["metadata.name: Invalid value: \"Web\": a lowercase RFC 1123 subdomain"]),
        ),
        case(
            "name of 254 characters",
            replace(
                DEPLOYMENT,
                "  name: web\n",
                &format!("  name: {}\n", "a".repeat(254)),
            ),
            Invalid(&[
                "metadata.name: Invalid value: ",
                "must be no more than 253 characters (is 254)",
            ]),
        ),
        case(
            "name ending with a dash",
            replace(SERVICE, "  name: web\n", "  name: web-\n"),
            Invalid(&["metadata.name: Invalid value: \"web-\": a DNS-1035 label"]),
        ),
        case(
            "invalid label key",
            replace(
                DEPLOYMENT,
                "    app.kubernetes.io/part-of: shop\n  annotations",
                "    app.kubernetes.io/part of: shop\n  annotations",
            ),
            Invalid(&[
                "metadata.labels: Invalid value: \"app.kubernetes.io/part of\": name part must consist",
            ]),
        ),
        case(
            "invalid label value",
            replace(NAMESPACE, "team: storefront", "team: store front"),
            Invalid(&["metadata.labels[team]: Invalid value: \"store front\": a label value must"]),
        ),
        case(
            "annotations over 256 KiB",
            big_annotation,
            Invalid(&["metadata.annotations: Too long: may not be more than 262144 bytes"]),
        ),
        // --- Containers
        case(
            "request above limit",
            replace(DEPLOYMENT, "cpu: 250m", "cpu: 750m"),
            Invalid(&[
                "spec.template.spec.containers[0].resources.requests[cpu]: Invalid value: \"750m\": must be less than or equal to cpu limit of 500m",
            ]),
        ),
        case(
            "negative quantity",
            replace(DEPLOYMENT, "memory: 64Mi", "memory: -64Mi"),
            Invalid(&[
                "resources.requests[memory]: Invalid value: \"-64Mi\": must be greater than or equal to 0",
            ]),
        ),
        case(
            "duplicate container port names",
            replace(
                DEPLOYMENT,
                "- name: metrics\n              containerPort: 9113",
                "- name: http\n              containerPort: 9113",
            ),
            Invalid(&["spec.template.spec.containers[0].ports[1].name: Duplicate value: \"http\""]),
        ),
        case(
            "duplicate container names",
            replace(
                POD,
                "  containers:\n",
                "  containers:\n    - name: toolbox\n      image: busybox:1.36\n",
            ),
            Invalid(&["spec.containers[1].name: Duplicate value: \"toolbox\""]),
        ),
        case(
            "container port 0",
            replace(DEPLOYMENT, "containerPort: 9113", "containerPort: 0"),
            Invalid(&["spec.template.spec.containers[0].ports[1].containerPort: Required value"]),
        ),
        case(
            "container port 70000",
            replace(DEPLOYMENT, "containerPort: 9113", "containerPort: 70000"),
            Invalid(&[
                "spec.template.spec.containers[0].ports[1].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive",
            ]),
        ),
        case(
            "SCTP container port",
            replace(DEPLOYMENT, "protocol: TCP", "protocol: SCTP"),
            Invalid(&[
                "containers[0].ports[0].protocol: Unsupported value: \"SCTP\": supported values: \"TCP\", \"UDP\"; Skiff's datapath handles only TCP and UDP",
            ]),
        ),
        case(
            "lower-case tcp",
            replace(SERVICE, "protocol: TCP", "protocol: tcp"),
            Invalid(&[
                "spec.ports[1].protocol: Unsupported value: \"tcp\": supported values: \"TCP\", \"UDP\"",
            ]),
        ),
        case(
            "probe with two handlers",
            replace(
                DEPLOYMENT,
                "            tcpSocket:\n              port: 80\n",
                "            tcpSocket:\n              port: 80\n            exec:\n              command: [\"true\"]\n",
            ),
            Invalid(&[
                "containers[0].livenessProbe.tcpSocket: Forbidden: may not specify more than 1 handler type",
            ]),
        ),
        case(
            "probe scheme in lower case",
            replace(
                DEPLOYMENT,
                "              path: /healthz\n",
                "              path: /healthz\n              scheme: https\n",
            ),
            Invalid(&[
                "readinessProbe.httpGet.scheme: Unsupported value: \"https\": supported values: \"HTTP\", \"HTTPS\"",
            ]),
        ),
        case(
            "bad toleration operator",
            replace(
                POD,
                "      operator: Exists\n      effect: NoSchedule",
                "      operator: Contains\n      effect: NoSchedule",
            ),
            Invalid(&[
                "spec.tolerations[0].operator: Unsupported value: \"Contains\": supported values: \"Equal\", \"Exists\"",
            ]),
        ),
        // --- Workloads
        case(
            "selector does not match the template labels",
            replace(
                DEPLOYMENT,
                "    matchLabels:\n      app.kubernetes.io/name: web",
                "    matchLabels:\n      app.kubernetes.io/name: api",
            ),
            Invalid(&[
                "spec.template.metadata.labels: Invalid value: {",
                "selector does not match template labels",
            ]),
        ),
        case(
            "empty selector",
            replace(
                DEPLOYMENT,
                "  selector:\n    matchLabels:\n      app.kubernetes.io/name: web\n",
                "  selector: {}\n",
            ),
            Invalid(&["spec.selector: Required value"]),
        ),
        case(
            "selector with an unknown operator",
            replace(REPLICA_SET, "operator: In", "operator: Within"),
            Invalid(&[
                "spec.selector: Invalid value: ",
                "unknown operator \"Within\"",
            ]),
        ),
        case(
            "negative replicas",
            replace(DEPLOYMENT, "replicas: 3", "replicas: -1"),
            Invalid(&["spec.replicas: Invalid value: -1: must be greater than or equal to 0"]),
        ),
        case(
            "maxSurge and maxUnavailable both zero",
            replace(DEPLOYMENT, "maxSurge: 25%", "maxSurge: 0"),
            Invalid(&[
                "spec.strategy.rollingUpdate.maxSurge: Invalid value: 0: may not be 0 when maxUnavailable is 0",
            ]),
        ),
        case(
            "template restart policy other than Always",
            replace(
                REPLICA_SET,
                "    spec:\n      containers:",
                "    spec:\n      restartPolicy: OnFailure\n      containers:",
            ),
            Invalid(&[
                "spec.template.spec.restartPolicy: Unsupported value: \"OnFailure\": supported values: \"Always\"",
            ]),
        ),
        // --- Services
        case(
            "LoadBalancer service",
            replace(NODE_PORT_SERVICE, "type: NodePort", "type: LoadBalancer"),
            Invalid(&[
                "spec.type: Unsupported value: \"LoadBalancer\"",
                "Skiff has no load balancer integration",
            ]),
        ),
        case(
            "nodePort on a ClusterIP service",
            replace(
                NODE_PORT_SERVICE,
                "  type: NodePort\n  externalTrafficPolicy: Cluster\n",
                "",
            ),
            Invalid(&[
                "spec.ports[0].nodePort: Forbidden: may not be used when type is \"ClusterIP\"",
            ]),
        ),
        case(
            "an internalTrafficPolicy Kubernetes does not have",
            replace(SERVICE, "spec:\n", "spec:\n  internalTrafficPolicy: Node\n"),
            Invalid(&[
                "spec.internalTrafficPolicy: Unsupported value: \"Node\": supported values: \"Cluster\", \"Local\"",
            ]),
        ),
        // --- Refused until implemented
        case(
            "hostPort, which nothing on the node serves yet",
            replace(
                DEPLOYMENT,
                "containerPort: 9113",
                "containerPort: 9113\n              hostPort: 9113",
            ),
            Invalid(&[
                "spec.template.spec.containers[0].ports[1].hostPort: Forbidden: host ports are not supported yet",
            ]),
        ),
        case(
            "hostIP is not a field Skiff has",
            replace(
                DEPLOYMENT,
                "containerPort: 9113",
                "containerPort: 9113\n              hostIP: 10.250.0.2",
            ),
            Decode(&[
                "spec.template.spec.containers[0].ports[1]",
                "unknown field `hostIP`",
            ]),
        ),
        case(
            "duplicate service ports",
            replace(SERVICE, "port: 9113", "port: 80"),
            Invalid(&["spec.ports[1]: Duplicate value: \"80/TCP\""]),
        ),
        case(
            "service port 0",
            replace(SERVICE, "port: 9113", "port: 0"),
            Invalid(&[
                "spec.ports[1].port: Invalid value: 0: must be between 1 and 65535, inclusive",
            ]),
        ),
        case(
            "IPv6 cluster IP",
            replace(SERVICE, "spec:\n", "spec:\n  clusterIP: fd00::10\n"),
            Invalid(&["spec.clusterIP: Invalid value: \"fd00::10\": IPv6 is not supported"]),
        ),
    ]
}

#[test]
fn bad_manifests_are_refused_with_the_specific_error() {
    let cases = bad_manifests();
    assert!(cases.len() >= 30, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for c in &cases {
        let (got, phrases) = match (&c.expect, manifest::parse(&c.manifest)) {
            (Expect::Decode(phrases), Err(e)) => (e.to_string(), *phrases),
            (Expect::Decode(_), Ok(objects)) => {
                failures.push(format!(
                    "{}: decoded to {} objects, expected an error",
                    c.name,
                    objects.len()
                ));
                continue;
            }
            (Expect::Invalid(phrases), Ok(mut objects)) => {
                let messages: Vec<String> = objects
                    .iter_mut()
                    .flat_map(|o| {
                        o.apply_defaults();
                        o.validate()
                    })
                    .map(|e| e.to_string())
                    .collect();
                (messages.join("\n"), *phrases)
            }
            (Expect::Invalid(_), Err(e)) => {
                failures.push(format!("{}: refused while decoding: {e}", c.name));
                continue;
            }
        };
        if got.is_empty() {
            failures.push(format!("{}: accepted as valid", c.name));
        }
        for phrase in phrases {
            if !got.contains(phrase) {
                // Long inputs make long messages; show only the start.
                let shown: String = got.chars().take(600).collect();
                failures.push(format!("{}: {phrase:?} not in:\n{shown}", c.name));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The Service of Kubernetes' "Create an External Load Balancer" task that preserves the client's
/// source address: both its type and its policy are refused, in one answer.
const DOCS_LOAD_BALANCER_LOCAL: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: example-service
spec:
  selector:
    app: example
  ports:
    - port: 8765
      targetPort: 9376
  externalTrafficPolicy: Local
  type: LoadBalancer
";

/// The `nodeport` Service of Kubernetes' "Using Source IP" tutorial after its
/// `kubectl patch svc nodeport -p '{"spec":{"externalTrafficPolicy":"Local"}}'`.
const DOCS_NODE_PORT_LOCAL: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: nodeport
  labels:
    app: source-ip-app
spec:
  type: NodePort
  externalTrafficPolicy: Local
  selector:
    app: source-ip-app
  ports:
    - port: 80
      protocol: TCP
      targetPort: 8080
";

/// The Service of Kubernetes' "Service Internal Traffic Policy" page.
const DOCS_INTERNAL_LOCAL: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: my-service
spec:
  selector:
    app.kubernetes.io/name: MyApp
  ports:
    - protocol: TCP
      port: 80
      targetPort: 9376
  internalTrafficPolicy: Local
";

#[test]
fn traffic_policy_local_manifests_from_the_kubernetes_docs_are_accepted() {
    assert_eq!(
        validation_errors(DOCS_NODE_PORT_LOCAL),
        Vec::<String>::new()
    );
    assert_eq!(validation_errors(DOCS_INTERNAL_LOCAL), Vec::<String>::new());
    // LoadBalancer is refused for itself; its Local policy is not (and `healthCheckNodePort`,
    // which Kubernetes allocates for it, has no Skiff counterpart: there is no LoadBalancer).
    assert_eq!(
        validation_errors(DOCS_LOAD_BALANCER_LOCAL),
        [
            "spec.type: Unsupported value: \"LoadBalancer\": supported values: \"ClusterIP\", \"NodePort\"; Skiff has no load balancer integration; use NodePort",
        ]
    );
    // The same manifests with the default policy, written out or left to the server, pass.
    for (manifest, local) in [
        (DOCS_NODE_PORT_LOCAL, "  externalTrafficPolicy: Local\n"),
        (DOCS_INTERNAL_LOCAL, "  internalTrafficPolicy: Local\n"),
    ] {
        assert_eq!(
            validation_errors(&replace(manifest, "Local", "Cluster")),
            Vec::<String>::new()
        );
        assert_eq!(
            validation_errors(&replace(manifest, local, "")),
            Vec::<String>::new()
        );
    }
}

#[test]
fn every_problem_in_one_object_is_reported_together() {
    let bad = replace(DEPLOYMENT, "replicas: 3", "replicas: -2");
    let bad = replace(&bad, "containerPort: 9113", "containerPort: 70000");
    let bad = replace(&bad, "cpu: 250m", "cpu: 2");
    let bad = replace(&bad, "maxSurge: 25%", "maxSurge: \"25\"");
    let c0 = "spec.template.spec.containers[0]";
    assert_eq!(
        validation_errors(&bad),
        [
            "spec.replicas: Invalid value: -2: must be greater than or equal to 0".to_owned(),
            format!("{c0}.ports[1].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive"),
            format!("{c0}.resources.requests[cpu]: Invalid value: \"2\": must be less than or equal to cpu limit of 500m"),
            "spec.strategy.rollingUpdate.maxSurge: Invalid value: \"25\": a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%', or '93%')".to_owned(),
        ]
    );
}

#[test]
fn yaml_syntax_errors_name_the_document_by_its_position_in_the_file() {
    let text = format!("{NAMESPACE}---\n# nothing here\n---\nkind: [Pod\n");
    let e = manifest::parse(text.as_bytes()).expect_err("syntax error");
    assert!(
        e.to_string().starts_with("document 3: not valid YAML"),
        "{e}"
    );
}

#[test]
fn decode_errors_name_the_document_by_its_position_in_the_file() {
    let bad = replace(SERVICE, "kind: Service", "kind: Servce");
    let text = format!("{NAMESPACE}---\n# nothing here\n---\n{bad}");
    let e = manifest::parse(text.as_bytes()).expect_err("unknown kind");
    assert!(
        e.to_string().starts_with("document 3 (Servce web): "),
        "{e}"
    );
}

#[test]
fn list_whose_items_are_not_a_list_is_refused() {
    let e = manifest::parse(b"apiVersion: v1\nkind: List\nitems: {}\n").expect_err("bad items");
    assert!(e.to_string().contains("items"), "{e}");
}

#[test]
fn duplicate_keys_are_refused() {
    let text = "apiVersion: v1\nkind: Namespace\nkind: Pod\nmetadata:\n  name: a\n";
    let e = manifest::parse(text.as_bytes()).expect_err("duplicate kind");
    assert!(e.to_string().contains("kind"), "{e}");
    let json = br#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"a","name":"b"}}"#;
    assert!(Object::from_json(json).is_err());
}

#[test]
fn object_from_json_refuses_what_manifests_refuse() {
    let too_big = format!(
        "{{\"apiVersion\":\"v1\",\"kind\":\"Namespace\",\"metadata\":{{\"name\":\"a\",\"annotations\":{{\"x\":\"{}\"}}}}}}",
        "x".repeat(1_600_000)
    );
    let e = Object::from_json(too_big.as_bytes()).expect_err("too large");
    assert!(
        matches!(
            e,
            skiff_api::DecodeError::TooLarge {
                limit: 1_564_672,
                ..
            }
        ),
        "{e}"
    );

    let e = Object::from_json(b"{\"kind\": \"Namespace\xff\"}").expect_err("not UTF-8");
    assert!(
        matches!(e, skiff_api::DecodeError::NotUtf8 { offset: 19 }),
        "{e}"
    );

    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let e = Object::from_json(deep.as_bytes()).expect_err("too deep");
    assert!(e.to_string().contains("recursion limit exceeded"), "{e}");

    let e = Object::from_json(b"[]").expect_err("a list");
    assert!(
        matches!(e, skiff_api::DecodeError::NotAnObject { .. }),
        "{e}"
    );

    let e = Object::from_json(br#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web"},"spec":{"replicas":"three"}}"#)
        .expect_err("wrong type");
    assert_eq!(
        e.to_string(),
        "spec.replicas: invalid type: string \"three\", expected i32"
    );
}

// ---------------------------------------------------------------------------------------------
// Updates

fn bound_pod(node: &str) -> String {
    replace(
        POD,
        "  restartPolicy: Never\n",
        &format!("  restartPolicy: Never\n  nodeName: {node}\n"),
    )
}

#[test]
fn pod_node_name_may_be_set_once() {
    assert_eq!(
        update_errors(&bound_pod("node-1"), POD),
        Vec::<String>::new()
    );
    assert_eq!(
        update_errors(&bound_pod("node-1"), &bound_pod("node-1")),
        Vec::<String>::new()
    );
}

#[test]
fn pod_node_name_may_not_change_once_set() {
    let errors = update_errors(&bound_pod("node-2"), &bound_pod("node-1"));
    assert_eq!(
        errors,
        ["spec.nodeName: Invalid value: \"node-2\": may not change once set"]
    );
}

#[test]
fn pod_image_may_change_but_its_command_may_not() {
    let new = replace(POD, "image: busybox:1.36", "image: busybox:1.37");
    assert_eq!(update_errors(&new, POD), Vec::<String>::new());
    let new = replace(POD, "sleep 3600", "sleep 60");
    let errors = update_errors(&new, POD);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("spec: Forbidden: pod updates may not change fields other than"),
        "{errors:?}"
    );
}

#[test]
fn deployment_selector_change_is_refused() {
    let new = DEPLOYMENT.replace(
        "app.kubernetes.io/name: web",
        "app.kubernetes.io/name: web2",
    );
    let errors = update_errors(&new, DEPLOYMENT);
    assert_eq!(
        errors,
        [
            "spec.selector: Invalid value: {\"matchLabels\":{\"app.kubernetes.io/name\":\"web2\"}}: field is immutable"
        ]
    );
    let scaled = replace(DEPLOYMENT, "replicas: 3", "replicas: 10");
    assert_eq!(update_errors(&scaled, DEPLOYMENT), Vec::<String>::new());
}

#[test]
fn service_cluster_ip_change_is_refused() {
    let with_ip = |ip: &str| replace(SERVICE, "spec:\n", &format!("spec:\n  clusterIP: {ip}\n"));
    let errors = update_errors(&with_ip("10.96.0.20"), &with_ip("10.96.0.10"));
    assert_eq!(
        errors,
        ["spec.clusterIP: Invalid value: \"10.96.0.20\": field is immutable"]
    );
    let errors = update_errors(&with_ip("None"), &with_ip("10.96.0.10"));
    assert_eq!(
        errors,
        ["spec.clusterIP: Invalid value: \"None\": field is immutable"]
    );
    // Allocation fills an empty clusterIP; the type may change.
    assert_eq!(
        update_errors(&with_ip("10.96.0.10"), SERVICE),
        Vec::<String>::new()
    );
    let node_port = replace(
        &with_ip("10.96.0.10"),
        "spec:\n",
        "spec:\n  type: NodePort\n",
    );
    assert_eq!(
        update_errors(&node_port, &with_ip("10.96.0.10")),
        Vec::<String>::new()
    );
}

#[test]
fn changing_the_name_or_kind_is_refused() {
    let renamed = replace(NAMESPACE, "name: shop", "name: shop2");
    assert_eq!(
        update_errors(&renamed, NAMESPACE),
        ["metadata.name: Invalid value: \"shop2\": field is immutable"]
    );
    let errors = update_errors(POD, NAMESPACE);
    assert_eq!(errors, ["kind: may not change from Namespace to Pod"]);
}
