//! Resource names as people type them (`po`, `deploy`, `deployments.apps`, `svc/web`) and as
//! skiffctl prints them (`deployment.apps/web`).

use skiff_api::{Object, ResourceInfo, object::resource_by_name};

use crate::error::{Error, Result};

/// Finds a resource by kind, plural, singular or short name.
pub fn resolve(name: &str) -> Result<&'static ResourceInfo> {
    resource_by_name(name).ok_or_else(|| Error::UnknownResource {
        name: name.to_owned(),
    })
}

/// The API group (`apps`), `None` for the core group.
pub fn group(info: &ResourceInfo) -> Option<&'static str> {
    info.api_version.rsplit_once('/').map(|(g, _)| g)
}

/// `pod`, `deployment.apps`, `lease.coordination.k8s.io`: how kubectl names a resource in
/// messages.
pub fn kind_ref(info: &ResourceInfo) -> String {
    let kind = info.kind.to_ascii_lowercase();
    match group(info) {
        Some(g) => format!("{kind}.{g}"),
        None => kind,
    }
}

/// `deployment.apps/web`.
pub fn object_ref(info: &ResourceInfo, name: &str) -> String {
    format!("{}/{name}", kind_ref(info))
}

/// `deployment.apps/web` for an object (`-o name`).
pub fn name_of(object: &Object) -> String {
    object_ref(object.info(), &object.meta().name)
}

/// The kinds `all` stands for, as in kubectl: the workloads and their Services.
const ALL: &[&str] = &["pods", "services", "deployments", "replicasets"];

/// What positional arguments name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Targets {
    /// `TYPE[,TYPE...]`: every object of the types (in scope).
    All(Vec<&'static ResourceInfo>),
    /// `TYPE[,TYPE...] NAME...` or `TYPE/NAME...`.
    Named(Vec<(&'static ResourceInfo, String)>),
}

/// `pods,svc` or `all`: the resources, without repeats.
fn resolve_list(arg: &str) -> Result<Vec<&'static ResourceInfo>> {
    let mut infos: Vec<&'static ResourceInfo> = Vec::new();
    for part in arg.split(',') {
        let found = if part.eq_ignore_ascii_case("all") {
            ALL.iter().map(|r| resolve(r)).collect::<Result<Vec<_>>>()?
        } else {
            vec![resolve(part)?]
        };
        for info in found {
            if !infos.contains(&info) {
                infos.push(info);
            }
        }
    }
    Ok(infos)
}

impl Targets {
    /// Parses `TYPE[,TYPE...] [NAME...]` or `TYPE/NAME...`.
    pub fn parse(args: &[String]) -> Result<Targets> {
        let Some(first) = args.first() else {
            return Err(Error::NoName);
        };
        if first.contains('/') {
            let named = args
                .iter()
                .map(|arg| {
                    let (kind, name) = arg
                        .split_once('/')
                        .filter(|(k, n)| !k.is_empty() && !n.is_empty() && !n.contains('/'))
                        .ok_or_else(|| Error::BadResourceName { arg: arg.clone() })?;
                    Ok((resolve(kind)?, name.to_owned()))
                })
                .collect::<Result<Vec<_>>>()?;
            return Ok(Targets::Named(named));
        }
        let infos = resolve_list(first)?;
        let names = &args[1..];
        if names.is_empty() {
            return Ok(Targets::All(infos));
        }
        if names.iter().any(|n| n.contains('/')) {
            return Err(Error::MixedResourceForms);
        }
        Ok(Targets::Named(
            infos
                .iter()
                .flat_map(|info| names.iter().map(|n| (*info, n.clone())))
                .collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use skiff_api::{
        Kind,
        kinds::{Deployment, Lease, Pod, Service},
    };

    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn kinds_resolve_from_every_name_people_use() {
        for name in [
            "deploy",
            "deployment",
            "deployments",
            "Deployment",
            "DEPLOYMENTS",
            "deployments.apps",
        ] {
            assert_eq!(resolve(name).expect(name), Deployment::INFO, "{name}");
        }
        assert_eq!(resolve("po").expect("po"), Pod::INFO);
        assert_eq!(resolve("svc").expect("svc"), Service::INFO);
    }

    #[test]
    fn an_unknown_kind_is_worded_like_kubectl() {
        let err = resolve("foo").expect_err("unknown");
        assert_eq!(
            err.to_string(),
            r#"the server doesn't have a resource type "foo""#
        );
        assert!(resolve("deployments.core").is_err());
    }

    #[test]
    fn kind_refs_carry_the_api_group() {
        assert_eq!(object_ref(Pod::INFO, "web-1"), "pod/web-1");
        assert_eq!(object_ref(Deployment::INFO, "web"), "deployment.apps/web");
        assert_eq!(kind_ref(Lease::INFO), "lease.coordination.k8s.io");
    }

    #[test]
    fn targets_parse_type_names_and_type_slash_name_forms() {
        assert_eq!(
            Targets::parse(&args(&["po"])).expect("all"),
            Targets::All(vec![Pod::INFO])
        );
        assert_eq!(
            Targets::parse(&args(&["deploy,svc,deployments"])).expect("list"),
            Targets::All(vec![Deployment::INFO, Service::INFO])
        );
        assert_eq!(
            Targets::parse(&args(&["po,svc", "web"])).expect("names of each"),
            Targets::Named(vec![
                (Pod::INFO, "web".into()),
                (Service::INFO, "web".into())
            ])
        );
        let Targets::All(all) = Targets::parse(&args(&["all"])).expect("all") else {
            panic!("not all")
        };
        assert_eq!(all.len(), 4);
        assert_eq!(
            Targets::parse(&args(&["po", "a", "b"])).expect("named"),
            Targets::Named(vec![(Pod::INFO, "a".into()), (Pod::INFO, "b".into())])
        );
        assert_eq!(
            Targets::parse(&args(&["svc/web", "deploy/web"])).expect("slash"),
            Targets::Named(vec![
                (Service::INFO, "web".into()),
                (Deployment::INFO, "web".into())
            ])
        );
        assert!(matches!(
            Targets::parse(&args(&["po", "svc/web"])),
            Err(Error::MixedResourceForms)
        ));
        assert!(matches!(
            Targets::parse(&args(&["po/"])),
            Err(Error::BadResourceName { .. })
        ));
        assert!(matches!(
            Targets::parse(&args(&["foo/x"])),
            Err(Error::UnknownResource { .. })
        ));
    }
}
