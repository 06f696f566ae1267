//! `describe`: fetch objects and what they own or serve, and print their descriptions.

use std::time::SystemTime;

use skiff_api::{
    Object,
    client::{Client, ListParams},
    kinds::{Endpoints, Pod, ReplicaSet},
    print::selector,
};

use super::{Scope, finish, report};
use crate::{
    Context, Io,
    cli::DescribeArgs,
    describe::{Related, describe},
    error::{Error, Result},
    resource::Targets,
};

pub async fn run(ctx: Context<'_>, args: &DescribeArgs, io: &mut Io<'_>) -> Result<()> {
    let targets = Targets::parse(&args.resources)?;
    let label_selector = args.selector.clone().unwrap_or_default();
    if matches!(targets, Targets::Named(_)) && !label_selector.is_empty() {
        return Err(Error::NamesWithSelector);
    }
    let (settings, client) = ctx.connect().await?;
    let scope = Scope::new(&settings);
    let mut failed = 0;
    let objects = match targets {
        Targets::All(infos) => {
            let mut all = Vec::new();
            for info in &infos {
                let ns = scope.for_resource(info);
                let params = ListParams::labels(label_selector.clone());
                all.extend(client.list_objects(info, ns, &params).await?.0);
            }
            if all.is_empty() {
                io.note(&super::get::no_resources(
                    if infos.iter().any(|i| i.namespaced) {
                        &scope.namespace
                    } else {
                        ""
                    },
                ))?;
            }
            all
        }
        Targets::Named(named) => {
            let mut found = Vec::new();
            for (info, name) in named {
                match client
                    .get_object(info, scope.for_resource(info), &name)
                    .await
                {
                    Ok(o) => found.push(o),
                    Err(e) => report(io, &mut failed, e.into())?,
                }
            }
            found
        }
    };
    for (i, object) in objects.iter().enumerate() {
        if i > 0 {
            writeln!(io.out)?;
        }
        let related = related(&client, object).await;
        io.out
            .write_all(describe(object, &related, SystemTime::now()).as_bytes())?;
    }
    finish(failed)
}

/// Fetches what the description of `object` shows besides the object. A failure here only
/// leaves that part out.
async fn related(client: &Client, object: &Object) -> Related {
    let meta = object.meta();
    let ns = meta.namespace.as_str();
    let owned_by =
        |o: &skiff_api::ObjectMeta| o.controller_ref().is_some_and(|r| r.uid == meta.uid);
    let mut related = Related::default();
    let result = match object {
        Object::Deployment(d) => client
            .list::<ReplicaSet>(ns, &ListParams::labels(selector_text(&d.spec.selector)))
            .await
            .map(|(items, _)| {
                related.replica_sets = items
                    .into_iter()
                    .filter(|rs| owned_by(&rs.metadata))
                    .collect()
            }),
        Object::ReplicaSet(rs) => client
            .list::<Pod>(ns, &ListParams::labels(selector_text(&rs.spec.selector)))
            .await
            .map(|(items, _)| {
                related.pods = items
                    .into_iter()
                    .filter(|p| owned_by(&p.metadata))
                    .collect()
            }),
        Object::Service(_) => match client.get::<Endpoints>(ns, &meta.name).await {
            Ok(e) => {
                related.endpoints = Some(e);
                Ok(())
            }
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        },
        Object::Node(_) => client
            .list::<Pod>(
                "",
                &ListParams::fields(format!("spec.nodeName={}", meta.name)),
            )
            .await
            .map(|(items, _)| related.pods = items),
        _ => Ok(()),
    };
    if let Err(e) = result {
        tracing::warn!(object = %object.key(), "could not fetch related objects: {e}");
    }
    related
}

/// A spec selector as a query; empty (everything) when it cannot be one, the owner filter
/// then narrows the result.
fn selector_text(s: &skiff_api::selector::LabelSelector) -> String {
    if s.is_empty() {
        return String::new();
    }
    match s.to_selector() {
        Ok(_) => selector(s),
        Err(_) => String::new(),
    }
}
