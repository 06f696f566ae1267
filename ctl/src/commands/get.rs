//! `get`: print objects, and with `-w` keep printing them as they change.

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime},
};

use skiff_api::{
    Object, ResourceInfo,
    client::{Client, ListParams, WatchEvent},
};
use tokio_stream::StreamExt;

use super::{Scope, finish, report};
use crate::{
    Context, Io,
    cli::GetArgs,
    error::{Error, Result},
    output::{Format, Printer},
    resource::Targets,
};

/// Pause before watching again after the server ended a watch cleanly.
const REWATCH_DELAY: Duration = Duration::from_secs(1);

pub async fn run(ctx: Context<'_>, args: &GetArgs, io: &mut Io<'_>) -> Result<()> {
    let targets = Targets::parse(&args.resources)?;
    let params = ListParams {
        label_selector: args.selector.clone().unwrap_or_default(),
        field_selector: args.field_selector.clone().unwrap_or_default(),
    };
    if let Targets::All(infos) = &targets
        && args.watch
        && infos.len() > 1
    {
        return Err(Error::WatchKinds);
    }
    if let Targets::Named(named) = &targets {
        if !params.label_selector.is_empty() || !params.field_selector.is_empty() {
            return Err(Error::NamesWithSelector);
        }
        if args.all_namespaces {
            return Err(Error::NamesAcrossNamespaces);
        }
        if args.watch && named.len() > 1 {
            return Err(Error::WatchMany { count: named.len() });
        }
    }
    let format = Format::from(args.output);
    let mut printer = Printer::new(
        format,
        args.all_namespaces,
        args.show_labels,
        args.no_headers,
    );
    let (settings, client) = ctx.connect().await?;
    let scope = Scope::new(&settings);

    match targets {
        Targets::All(infos) if args.watch => {
            let &[info] = infos.as_slice() else {
                return Err(Error::WatchKinds);
            };
            let ns = if args.all_namespaces {
                ""
            } else {
                scope.for_resource(info)
            };
            let (items, rv) = client.list_objects(info, ns, &params).await?;
            if items.is_empty() && format.says_when_empty() {
                io.note(&no_resources(ns))?;
            }
            initial(&mut printer, &items, false, format, io)?;
            let seen = items.into_iter().map(|o| (o.key(), o)).collect();
            let mut w = Watch {
                client: &client,
                info,
                namespace: ns,
                params,
                seen,
            };
            w.run(rv, &mut printer, io).await
        }
        Targets::All(infos) => {
            let mut all = Vec::new();
            for info in &infos {
                let ns = if args.all_namespaces {
                    ""
                } else {
                    scope.for_resource(info)
                };
                all.extend(client.list_objects(info, ns, &params).await?.0);
            }
            if all.is_empty() && format.says_when_empty() {
                let namespaced = infos.iter().any(|i| i.namespaced);
                let ns = if namespaced && !args.all_namespaces {
                    scope.namespace.as_str()
                } else {
                    ""
                };
                io.note(&no_resources(ns))?;
            }
            printer.batch(&all, false, SystemTime::now(), io.out)
        }
        Targets::Named(named) => {
            let single = named.len() == 1;
            let mut found = Vec::new();
            let mut failed = 0;
            for (info, name) in named {
                match client
                    .get_object(info, scope.for_resource(info), &name)
                    .await
                {
                    Ok(o) => found.push(o),
                    Err(e) => report(io, &mut failed, e.into())?,
                }
            }
            if args.watch {
                let Some(first) = found.pop() else {
                    return finish(failed);
                };
                let info = first.info();
                let ns = scope.for_resource(info).to_owned();
                let rv = first.meta().revision();
                initial(&mut printer, std::slice::from_ref(&first), true, format, io)?;
                let params = ListParams::fields(format!("metadata.name={}", first.meta().name));
                let seen = BTreeMap::from([(first.key(), first)]);
                let mut w = Watch {
                    client: &client,
                    info,
                    namespace: &ns,
                    params,
                    seen,
                };
                return w.run(rv, &mut printer, io).await;
            }
            printer.batch(&found, single, SystemTime::now(), io.out)?;
            finish(failed)
        }
    }
}

/// What a watch prints before its first event: a table (or names) as `get` would, but YAML and
/// JSON as a stream of documents, one per object, like the events that follow.
fn initial(
    printer: &mut Printer,
    items: &[Object],
    single: bool,
    format: Format,
    io: &mut Io<'_>,
) -> Result<()> {
    let now = SystemTime::now();
    if matches!(format, Format::Yaml | Format::Json) {
        items.iter().try_for_each(|o| printer.event(o, now, io.out))
    } else {
        printer.batch(items, single, now, io.out)
    }
}

/// `No resources found in default namespace.`, or without a namespace for cluster-scoped
/// resources and `-A`.
pub(crate) fn no_resources(namespace: &str) -> String {
    if namespace.is_empty() {
        "No resources found".to_owned()
    } else {
        format!("No resources found in {namespace} namespace.")
    }
}

/// A watch as a state machine: watch from a revision; on every event print the object and
/// remember it; when the history is gone, list again, print what changed meanwhile, and watch
/// from the new list's revision.
struct Watch<'a> {
    client: &'a Client,
    info: &'static ResourceInfo,
    namespace: &'a str,
    params: ListParams,
    /// The last state of every object seen, by key (to tell what changed across a relist).
    seen: BTreeMap<String, Object>,
}

impl Watch<'_> {
    /// Runs until the server fails (an error) or the caller stops polling (interrupted).
    async fn run(&mut self, mut rv: i64, printer: &mut Printer, io: &mut Io<'_>) -> Result<()> {
        loop {
            let mut stream = match self
                .client
                .watch(self.info, self.namespace, &self.params, rv, true)
                .await
            {
                Ok(s) => s,
                Err(e) if e.is_gone() => {
                    rv = self.relist(printer, io).await?;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            loop {
                match stream.next().await {
                    Some(Ok(WatchEvent::Bookmark(r))) => rv = rv.max(r),
                    Some(Ok(event)) => {
                        rv = rv.max(event.resource_version());
                        let (object, deleted) = match event {
                            WatchEvent::Added(o) | WatchEvent::Modified(o) => (o, false),
                            WatchEvent::Deleted(o) => (o, true),
                            WatchEvent::Bookmark(_) => continue,
                        };
                        printer.event(&object, SystemTime::now(), io.out)?;
                        if deleted {
                            self.seen.remove(&object.key());
                        } else {
                            self.seen.insert(object.key(), object);
                        }
                    }
                    Some(Err(e)) if e.is_gone() => {
                        tracing::info!(
                            resource = self.info.plural,
                            rv,
                            "watch history gone; listing again"
                        );
                        rv = self.relist(printer, io).await?;
                        break;
                    }
                    Some(Err(e)) => return Err(e.into()),
                    None => {
                        tracing::debug!(
                            resource = self.info.plural,
                            rv,
                            "watch ended; watching again"
                        );
                        tokio::time::sleep(REWATCH_DELAY).await;
                        break;
                    }
                }
            }
        }
    }

    /// Lists again, prints what changed since the objects were last seen (deleted ones in
    /// their last known state), and returns the revision to watch from.
    async fn relist(&mut self, printer: &mut Printer, io: &mut Io<'_>) -> Result<i64> {
        let (items, rv) = self
            .client
            .list_objects(self.info, self.namespace, &self.params)
            .await?;
        let (changed, fresh) = changes_since(&self.seen, items);
        for o in &changed {
            printer.event(o, SystemTime::now(), io.out)?;
        }
        self.seen = fresh;
        Ok(rv)
    }
}

/// Compares a fresh list with what was seen: the objects that are new or changed, then those
/// that are gone (as last seen); and the fresh state by key.
pub fn changes_since(
    seen: &BTreeMap<String, Object>,
    items: Vec<Object>,
) -> (Vec<Object>, BTreeMap<String, Object>) {
    let fresh: BTreeMap<String, Object> = items.into_iter().map(|o| (o.key(), o)).collect();
    let mut changed: Vec<Object> = fresh
        .iter()
        .filter(|(k, o)| {
            seen.get(*k).map(|s| &s.meta().resource_version) != Some(&o.meta().resource_version)
        })
        .map(|(_, o)| o.clone())
        .collect();
    changed.extend(
        seen.iter()
            .filter(|(k, _)| !fresh.contains_key(*k))
            .map(|(_, o)| o.clone()),
    );
    (changed, fresh)
}

#[cfg(test)]
mod tests {
    use skiff_api::{Kind, ObjectMeta, kinds::Pod};

    use super::*;

    fn pod(name: &str, rv: &str) -> Object {
        Pod {
            metadata: ObjectMeta {
                name: name.into(),
                namespace: "default".into(),
                resource_version: rv.into(),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        }
        .into_object()
    }

    #[test]
    fn a_relist_reports_new_changed_and_vanished_objects_only() {
        let seen: BTreeMap<String, Object> =
            [pod("same", "1"), pod("changed", "2"), pod("gone", "3")]
                .into_iter()
                .map(|o| (o.key(), o))
                .collect();
        let (changed, fresh) = changes_since(
            &seen,
            vec![pod("same", "1"), pod("changed", "7"), pod("new", "8")],
        );
        let names: Vec<(&str, &str)> = changed
            .iter()
            .map(|o| (o.meta().name.as_str(), o.meta().resource_version.as_str()))
            .collect();
        assert_eq!(names, [("changed", "7"), ("new", "8"), ("gone", "3")]);
        assert_eq!(fresh.len(), 3);
    }

    #[test]
    fn the_empty_message_names_the_namespace_when_there_is_one() {
        assert_eq!(
            no_resources("default"),
            "No resources found in default namespace."
        );
        assert_eq!(no_resources(""), "No resources found");
    }
}
