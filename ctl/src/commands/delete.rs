//! `delete`: by name, by label selector, or as named in manifests.

use skiff_api::{
    ResourceInfo,
    client::{Client, DeleteParams, ListParams},
};

use super::{Scope, apply::read_manifests, finish, get::no_resources, report};
use crate::{
    Context, Io,
    cli::DeleteArgs,
    error::{Error, Result},
    manifests::{self, Sourced},
    resource::{Targets, kind_ref, object_ref},
};

pub async fn run(ctx: Context<'_>, args: &DeleteArgs, io: &mut Io<'_>) -> Result<()> {
    let params = DeleteParams {
        propagation: args.cascade.into(),
        grace_period_seconds: (args.grace_period >= 0).then_some(args.grace_period),
        ..DeleteParams::default()
    };
    let selector = args.selector.clone().unwrap_or_default();
    let mut failed = 0;

    if !args.files.is_empty() {
        if !args.resources.is_empty() || !selector.is_empty() || args.all {
            return Err(Error::FilesAndResources);
        }
        let objects = read_manifests(&args.files, io, "delete")?;
        let (settings, client) = ctx.connect().await?;
        let scope = Scope::new(&settings);
        let deleter = Deleter::new(&client, params, args.ignore_not_found);
        for Sourced { source, mut object } in manifests::delete_order(objects) {
            let (info, name) = (object.info(), object.meta().name.clone());
            let result = match scope.place(&mut object) {
                Ok(()) => {
                    let ns = &object.meta().namespace;
                    deleter.delete(info, ns, &name, io).await
                }
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                let context = format!("deleting {} from {source}", object_ref(info, &name));
                report(io, &mut failed, e.about(context))?;
            }
        }
        return finish(failed);
    }

    if args.resources.is_empty() {
        return Err(Error::NothingToDelete);
    }
    let targets = Targets::parse(&args.resources)?;
    match &targets {
        Targets::Named(_) if !selector.is_empty() || args.all => {
            return Err(Error::NamesWithSelector);
        }
        Targets::All(_) if selector.is_empty() && !args.all => return Err(Error::NoName),
        _ => {}
    }
    let (settings, client) = ctx.connect().await?;
    let scope = Scope::new(&settings);
    let deleter = Deleter::new(&client, params, args.ignore_not_found);
    match targets {
        Targets::Named(named) => {
            for (info, name) in named {
                let ns = scope.for_resource(info);
                if let Err(e) = deleter.delete(info, ns, &name, io).await {
                    report(io, &mut failed, e)?;
                }
            }
        }
        Targets::All(infos) => {
            let mut any = false;
            for info in &infos {
                let ns = scope.for_resource(info);
                let list = ListParams::labels(selector.clone());
                let (items, _) = client.list_objects(info, ns, &list).await?;
                for o in items {
                    any = true;
                    let m = o.meta();
                    if let Err(e) = deleter.delete(info, &m.namespace, &m.name, io).await {
                        report(io, &mut failed, e)?;
                    }
                }
            }
            if !any {
                let namespaced = infos.iter().any(|i| i.namespaced);
                io.note(&no_resources(if namespaced {
                    &scope.namespace
                } else {
                    ""
                }))?;
            }
        }
    }
    finish(failed)
}

/// Deletes objects one at a time with the same options, saying so for each.
struct Deleter<'a> {
    client: &'a Client,
    params: DeleteParams,
    ignore_not_found: bool,
}

impl<'a> Deleter<'a> {
    fn new(client: &'a Client, params: DeleteParams, ignore_not_found: bool) -> Deleter<'a> {
        Deleter {
            client,
            params,
            ignore_not_found,
        }
    }

    /// Deletes one object and prints `deployment.apps "web" deleted`.
    async fn delete(
        &self,
        info: &'static ResourceInfo,
        namespace: &str,
        name: &str,
        io: &mut Io<'_>,
    ) -> Result<()> {
        match self
            .client
            .delete(info, namespace, name, self.params.clone())
            .await
        {
            Ok(_) => {
                writeln!(io.out, "{}", deleted_message(info, name))?;
                Ok(())
            }
            Err(e) if self.ignore_not_found && e.is_not_found() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// `deployment.apps "web" deleted`.
pub fn deleted_message(info: &ResourceInfo, name: &str) -> String {
    format!("{} \"{name}\" deleted", kind_ref(info))
}

#[cfg(test)]
mod tests {
    use skiff_api::{Kind, kinds::Deployment};

    use super::*;

    #[test]
    fn deletes_are_announced_like_kubectl() {
        assert_eq!(
            deleted_message(Deployment::INFO, "web"),
            r#"deployment.apps "web" deleted"#
        );
    }
}
