//! `rollout`: follow a Deployment's rollout (`status`), list its revisions (`history`), roll it
//! back (`undo`), and stop or restart rolling out template changes (`pause`, `resume`).

use std::time::Duration;

use clap::{ArgAction, Args, Subcommand};
use skiff_api::{
    Kind,
    client::{Client, ClientError, ListParams, WatchEvent},
    kinds::{Deployment, PodTemplateSpec, ReplicaSet, condition},
};
use tokio_stream::{Stream, StreamExt};

use super::{Scope, WRITE_ATTEMPTS};
use crate::{
    Context, Io,
    error::{Error, Result},
    resource::{Targets, object_ref},
};

/// The label the Deployment controller adds to tell its templates apart.
const POD_TEMPLATE_HASH: &str = "pod-template-hash";
/// A ReplicaSet's place in its Deployment's history.
const REVISION: &str = "deployment.kubernetes.io/revision";
/// Why a revision was made, as people record it.
const CHANGE_CAUSE: &str = "kubernetes.io/change-cause";
/// Pause before watching again after the server ended a watch cleanly.
const REWATCH_DELAY: Duration = Duration::from_secs(1);

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Follow a Deployment's rollout until it finishes (or fails).
    Status(StatusArgs),
    /// List a Deployment's revisions, or show one revision's pod template.
    History(HistoryArgs),
    /// Roll a Deployment back to its previous (or a given) revision.
    Undo(UndoArgs),
    /// Stop rolling out changes to a Deployment's pod template.
    Pause(Target),
    /// Roll out a paused Deployment's pod template changes again.
    Resume(Target),
}

/// The Deployment a rollout command is about.
#[derive(Debug, Args)]
pub struct Target {
    /// deployment/NAME, deployments/NAME or deploy NAME.
    #[arg(required = true, num_args = 1..=2, value_name = "TYPE[/NAME]")]
    pub resource: Vec<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub target: Target,
    /// Follow the rollout until it finishes; `-w=false` prints where it is once.
    #[arg(
        short = 'w',
        long,
        default_value_t = true,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        action = ArgAction::Set
    )]
    pub watch: bool,
    /// Give up after this long (`90s`, `5m`, `1h30m`); 0 waits for ever.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub target: Target,
    /// Show the pod template of this revision.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i64).range(0..))]
    pub revision: i64,
}

#[derive(Debug, Args)]
pub struct UndoArgs {
    #[command(flatten)]
    pub target: Target,
    /// The revision to roll back to (0: the one before the current).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i64).range(0..))]
    pub to_revision: i64,
}

/// Why a rollout command failed, beyond the API server's own errors.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RolloutError {
    /// The resource named is not a Deployment.
    #[error("rollout is only supported on deployments, not {resource}")]
    NotDeployment { resource: &'static str },
    /// More than one object was named.
    #[error("rollout takes one deployment, but {count} were given")]
    NotOne { count: usize },
    /// The Deployment's Progressing condition says it stopped progressing.
    #[error("deployment {name:?} exceeded its progress deadline")]
    DeadlineExceeded { name: String },
    /// `--timeout` passed first.
    #[error("timed out waiting for the condition")]
    TimedOut,
    /// The Deployment went away while being followed.
    #[error("deployment {name:?} was deleted")]
    Deleted { name: String },
    /// `--revision` or `--to-revision` names no revision.
    #[error("unable to find specified revision {revision} in history")]
    NoSuchRevision { revision: i64 },
    /// `undo` without a revision before the current one.
    #[error("no rollout history found for deployment {name:?}")]
    NoHistory { name: String },
    /// `undo` of a paused Deployment would not be rolled out.
    #[error(
        "you cannot rollback a paused deployment; resume it first with 'skiffctl rollout resume deployment/{name}' and try again"
    )]
    Paused { name: String },
    /// A `--timeout` that is not a duration.
    #[error("invalid duration {text:?}: use a number with a unit, like 90s, 5m or 1h30m")]
    BadDuration { text: String },
}

/// Where a rollout stands, as `rollout status` says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Not finished: what it waits for.
    Waiting(String),
    /// Every replica runs the current template and is available.
    Done(String),
}

pub async fn run(ctx: Context<'_>, command: &RolloutCommand, io: &mut Io<'_>) -> Result<()> {
    let target = match command {
        RolloutCommand::Status(a) => &a.target,
        RolloutCommand::History(a) => &a.target,
        RolloutCommand::Undo(a) => &a.target,
        RolloutCommand::Pause(a) | RolloutCommand::Resume(a) => a,
    };
    let name = match deployment_name(&target.resource)? {
        Ok(name) => name,
        Err(e) => return fail(io, &e),
    };
    let (settings, client) = ctx.connect().await?;
    let scope = Scope::new(&settings);
    let ns = scope.for_resource(Deployment::INFO);
    let outcome = match command {
        RolloutCommand::Status(a) => status(&client, ns, &name, a, io).await?,
        RolloutCommand::History(a) => history(&client, ns, &name, a.revision, io).await?,
        RolloutCommand::Undo(a) => undo(&client, ns, &name, a.to_revision, io).await?,
        RolloutCommand::Pause(_) => set_paused(&client, ns, &name, true, io).await?,
        RolloutCommand::Resume(_) => set_paused(&client, ns, &name, false, io).await?,
    };
    match outcome {
        Ok(()) => Ok(()),
        Err(e) => fail(io, &e),
    }
}

/// Reports a rollout failure on stderr; the command then exits with an error.
fn fail(io: &mut Io<'_>, e: &RolloutError) -> Result<()> {
    io.note(&format!("error: {e}"))?;
    Err(Error::Reported { count: 1 })
}

/// The Deployment named by `deployment/NAME`, `deployments/NAME` or `deploy NAME`.
pub fn deployment_name(args: &[String]) -> Result<Result<String, RolloutError>> {
    let named = match Targets::parse(args)? {
        Targets::All(_) => return Err(Error::NoName),
        Targets::Named(named) => named,
    };
    let [(info, name)] = named.as_slice() else {
        return Ok(Err(RolloutError::NotOne { count: named.len() }));
    };
    if *info != Deployment::INFO {
        return Ok(Err(RolloutError::NotDeployment {
            resource: info.plural,
        }));
    }
    Ok(Ok(name.clone()))
}

/// Judges a Deployment as `kubectl rollout status` does, only once the controller has seen its
/// latest spec.
pub fn rollout_status(d: &Deployment) -> Result<Progress, RolloutError> {
    let name = &d.metadata.name;
    let s = &d.status;
    if s.observed_generation < d.metadata.generation {
        return Ok(Progress::Waiting(
            "Waiting for deployment spec update to be observed...".into(),
        ));
    }
    if condition(&s.conditions, "Progressing")
        .is_some_and(|c| c.reason == "ProgressDeadlineExceeded")
    {
        return Err(RolloutError::DeadlineExceeded { name: name.clone() });
    }
    let replicas = d.spec.replicas.unwrap_or(1);
    let waiting = |what: String| {
        Ok(Progress::Waiting(format!(
            "Waiting for deployment {name:?} rollout to finish: {what}..."
        )))
    };
    if s.updated_replicas < replicas {
        return waiting(format!(
            "{} out of {replicas} new replicas have been updated",
            s.updated_replicas
        ));
    }
    if s.replicas > s.updated_replicas {
        return waiting(format!(
            "{} old replicas are pending termination",
            s.replicas - s.updated_replicas
        ));
    }
    if s.available_replicas < s.updated_replicas {
        return waiting(format!(
            "{} of {} updated replicas are available",
            s.available_replicas, s.updated_replicas
        ));
    }
    Ok(Progress::Done(format!(
        "deployment {name:?} successfully rolled out"
    )))
}

async fn status(
    client: &Client,
    ns: &str,
    name: &str,
    args: &StatusArgs,
    io: &mut Io<'_>,
) -> Result<Result<(), RolloutError>> {
    let d: Deployment = client.get(ns, name).await?;
    if !args.watch {
        return Ok(match rollout_status(&d) {
            Ok(Progress::Waiting(m) | Progress::Done(m)) => {
                writeln!(io.out, "{m}")?;
                Ok(())
            }
            Err(e) => Err(e),
        });
    }
    let follow = follow(client, ns, d, io);
    if args.timeout.is_zero() {
        return follow.await;
    }
    match tokio::time::timeout(args.timeout, follow).await {
        Ok(r) => r,
        Err(_) => Ok(Err(RolloutError::TimedOut)),
    }
}

/// Prints each new state of the rollout until it is done or fails.
async fn follow(
    client: &Client,
    ns: &str,
    mut d: Deployment,
    io: &mut Io<'_>,
) -> Result<Result<(), RolloutError>> {
    let name = d.metadata.name.clone();
    let mut watch = Follower {
        client,
        ns,
        name: &name,
        revision: d.metadata.revision(),
        stream: None,
    };
    let mut last = String::new();
    loop {
        match rollout_status(&d) {
            Ok(Progress::Done(m)) => {
                writeln!(io.out, "{m}")?;
                return Ok(Ok(()));
            }
            Ok(Progress::Waiting(m)) => {
                if m != last {
                    writeln!(io.out, "{m}")?;
                    io.out.flush()?;
                    last = m;
                }
            }
            Err(e) => return Ok(Err(e)),
        }
        match watch.next().await? {
            Some(next) => d = next,
            None => return Ok(Err(RolloutError::Deleted { name })),
        }
    }
}

type EventStream = Box<dyn Stream<Item = Result<WatchEvent, ClientError>> + Send + Unpin>;

/// One Deployment's versions as they change, through a watch that is resumed (or replaced by a
/// fresh read when its history is gone).
struct Follower<'a> {
    client: &'a Client,
    ns: &'a str,
    name: &'a str,
    revision: i64,
    stream: Option<EventStream>,
}

impl Follower<'_> {
    /// The next version; `None` once the Deployment is deleted.
    async fn next(&mut self) -> Result<Option<Deployment>> {
        loop {
            let stream = match &mut self.stream {
                Some(s) => s,
                None => {
                    let params = ListParams::fields(format!("metadata.name={}", self.name));
                    match self
                        .client
                        .watch(Deployment::INFO, self.ns, &params, self.revision, true)
                        .await
                    {
                        Ok(s) => self.stream.insert(Box::new(s)),
                        Err(e) if e.is_gone() => return self.reread().await,
                        Err(e) => return Err(e.into()),
                    }
                }
            };
            match stream.next().await {
                Some(Ok(WatchEvent::Bookmark(r))) => self.revision = self.revision.max(r),
                Some(Ok(WatchEvent::Added(o) | WatchEvent::Modified(o))) => {
                    self.revision = self.revision.max(o.meta().revision());
                    if let Some(d) = o.into_kind::<Deployment>() {
                        return Ok(Some(d));
                    }
                }
                Some(Ok(WatchEvent::Deleted(_))) => return Ok(None),
                Some(Err(e)) if e.is_gone() => {
                    self.stream = None;
                    return self.reread().await;
                }
                Some(Err(e)) => return Err(e.into()),
                None => {
                    self.stream = None;
                    tokio::time::sleep(REWATCH_DELAY).await;
                }
            }
        }
    }

    /// Reads the Deployment afresh, to watch on from there.
    async fn reread(&mut self) -> Result<Option<Deployment>> {
        match self.client.get::<Deployment>(self.ns, self.name).await {
            Ok(d) => {
                self.revision = d.metadata.revision();
                Ok(Some(d))
            }
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// The ReplicaSets the Deployment controls.
async fn owned_replica_sets(client: &Client, d: &Deployment) -> Result<Vec<ReplicaSet>> {
    let (all, _) = client
        .list::<ReplicaSet>(&d.metadata.namespace, &ListParams::default())
        .await?;
    Ok(all
        .into_iter()
        .filter(|rs| {
            rs.metadata
                .controller_ref()
                .is_some_and(|r| r.uid == d.metadata.uid)
        })
        .collect())
}

fn revision_of(rs: &ReplicaSet) -> Option<i64> {
    rs.metadata.annotations.get(REVISION)?.parse().ok()
}

/// `REVISION  CHANGE-CAUSE` rows, oldest revision first.
pub fn history_table(rss: &[ReplicaSet]) -> String {
    let mut rows: Vec<(i64, String)> = rss
        .iter()
        .filter_map(|rs| {
            let cause = rs
                .metadata
                .annotations
                .get(CHANGE_CAUSE)
                .cloned()
                .unwrap_or_else(|| "<none>".into());
            Some((revision_of(rs)?, cause))
        })
        .collect();
    rows.sort();
    // Two spaces between the columns, as kubectl prints this table.
    let width = rows
        .iter()
        .map(|(r, _)| r.to_string().len())
        .chain(std::iter::once("REVISION".len()))
        .max()
        .unwrap_or(0)
        + 2;
    let mut out = format!("{:width$}CHANGE-CAUSE\n", "REVISION");
    for (r, cause) in rows {
        out.push_str(&format!("{:width$}{cause}\n", r.to_string()));
    }
    out
}

async fn history(
    client: &Client,
    ns: &str,
    name: &str,
    revision: i64,
    io: &mut Io<'_>,
) -> Result<Result<(), RolloutError>> {
    let d: Deployment = client.get(ns, name).await?;
    let rss = owned_replica_sets(client, &d).await?;
    let what = object_ref(Deployment::INFO, name);
    if revision > 0 {
        let Some(rs) = rss.iter().find(|rs| revision_of(rs) == Some(revision)) else {
            return Ok(Err(RolloutError::NoSuchRevision { revision }));
        };
        writeln!(io.out, "{what} with revision #{revision}")?;
        writeln!(io.out, "Pod Template:")?;
        let yaml = serde_norway::to_string(&rs.spec.template)?;
        for line in yaml.lines() {
            writeln!(io.out, "  {line}")?;
        }
        return Ok(Ok(()));
    }
    if rss.iter().all(|rs| revision_of(rs).is_none()) {
        writeln!(io.out, "No rollout history found.")?;
        return Ok(Ok(()));
    }
    writeln!(io.out, "{what}")?;
    write!(io.out, "{}", history_table(&rss))?;
    Ok(Ok(()))
}

/// The ReplicaSet to roll back to: revision `to` (0: the highest below the current one).
pub fn rollback_target<'a>(
    rss: &'a [ReplicaSet],
    to: i64,
    name: &str,
) -> Result<&'a ReplicaSet, RolloutError> {
    let mut by_revision: Vec<(i64, &ReplicaSet)> = rss
        .iter()
        .filter_map(|rs| Some((revision_of(rs)?, rs)))
        .collect();
    if to > 0 {
        return by_revision
            .into_iter()
            .find(|(r, _)| *r == to)
            .map(|(_, rs)| rs)
            .ok_or(RolloutError::NoSuchRevision { revision: to });
    }
    by_revision.sort_by_key(|(r, _)| std::cmp::Reverse(*r));
    by_revision
        .get(1)
        .map(|(_, rs)| *rs)
        .ok_or_else(|| RolloutError::NoHistory { name: name.into() })
}

/// The template without the controller's hash label.
pub fn without_hash(t: &PodTemplateSpec) -> PodTemplateSpec {
    let mut t = t.clone();
    t.metadata.labels.remove(POD_TEMPLATE_HASH);
    t
}

async fn undo(
    client: &Client,
    ns: &str,
    name: &str,
    to: i64,
    io: &mut Io<'_>,
) -> Result<Result<(), RolloutError>> {
    let what = object_ref(Deployment::INFO, name);
    for _ in 0..WRITE_ATTEMPTS {
        let mut d: Deployment = client.get(ns, name).await?;
        if d.spec.paused {
            return Ok(Err(RolloutError::Paused { name: name.into() }));
        }
        let rss = owned_replica_sets(client, &d).await?;
        let target = match rollback_target(&rss, to, name) {
            Ok(rs) => rs,
            Err(e) => return Ok(Err(e)),
        };
        let template = without_hash(&target.spec.template);
        if template == without_hash(&d.spec.template) {
            let r = revision_of(target).unwrap_or(0);
            writeln!(
                io.out,
                "{what} skipped rollback (current template already matches revision {r})"
            )?;
            return Ok(Ok(()));
        }
        d.spec.template = template;
        match client.update(&d).await {
            Ok(_) => {
                writeln!(io.out, "{what} rolled back")?;
                return Ok(Ok(()));
            }
            Err(e) if e.is_conflict() => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::TooManyConflicts {
        what,
        attempts: WRITE_ATTEMPTS,
    })
}

async fn set_paused(
    client: &Client,
    ns: &str,
    name: &str,
    paused: bool,
    io: &mut Io<'_>,
) -> Result<Result<(), RolloutError>> {
    let what = object_ref(Deployment::INFO, name);
    let done = if paused { "paused" } else { "resumed" };
    for _ in 0..WRITE_ATTEMPTS {
        let mut d: Deployment = client.get(ns, name).await?;
        if d.spec.paused == paused {
            writeln!(io.out, "{what} already {done}")?;
            return Ok(Ok(()));
        }
        d.spec.paused = paused;
        match client.update(&d).await {
            Ok(_) => {
                writeln!(io.out, "{what} {done}")?;
                return Ok(Ok(()));
            }
            Err(e) if e.is_conflict() => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::TooManyConflicts {
        what,
        attempts: WRITE_ATTEMPTS,
    })
}

/// Parses `90s`, `5m`, `1h30m`, `500ms` or `0` (Go's duration syntax, without signs).
pub fn parse_duration(text: &str) -> Result<Duration, RolloutError> {
    let bad = || RolloutError::BadDuration { text: text.into() };
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = text;
    let mut total = Duration::ZERO;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(bad)?;
        let number: f64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let secs = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += Duration::try_from_secs_f64(number * secs).map_err(|_| bad())?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use skiff_api::{
        ObjectMeta,
        kinds::{Condition, DeploymentStatus},
    };

    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_deployment_is_named_in_any_of_kubectls_forms() {
        for form in [
            &["deployment/web"][..],
            &["deployments/web"],
            &["deploy", "web"],
            &["deploy/web"],
            &["deployment.apps/web"],
        ] {
            assert_eq!(
                deployment_name(&args(form)).unwrap(),
                Ok("web".into()),
                "{form:?}"
            );
        }
        assert_eq!(
            deployment_name(&args(&["rs/web"])).unwrap(),
            Err(RolloutError::NotDeployment {
                resource: "replicasets"
            })
        );
        assert_eq!(
            deployment_name(&args(&["deploy/a", "deploy/b"])).unwrap(),
            Err(RolloutError::NotOne { count: 2 })
        );
        assert!(matches!(
            deployment_name(&args(&["deploy"])),
            Err(Error::NoName)
        ));
    }

    fn deployment(generation: i64, replicas: i32, status: DeploymentStatus) -> Deployment {
        let mut d = Deployment {
            metadata: ObjectMeta {
                name: "web".into(),
                generation,
                ..ObjectMeta::default()
            },
            status,
            ..Deployment::default()
        };
        d.spec.replicas = Some(replicas);
        d
    }

    fn st(observed: i64, replicas: i32, updated: i32, available: i32) -> DeploymentStatus {
        DeploymentStatus {
            observed_generation: observed,
            replicas,
            updated_replicas: updated,
            available_replicas: available,
            ..DeploymentStatus::default()
        }
    }

    #[test]
    fn status_reads_like_kubectl_at_every_stage() {
        let waiting = |s: &str| Ok(Progress::Waiting(s.into()));
        assert_eq!(
            rollout_status(&deployment(3, 5, st(2, 5, 5, 5))),
            waiting("Waiting for deployment spec update to be observed...")
        );
        assert_eq!(
            rollout_status(&deployment(3, 5, st(3, 6, 2, 4))),
            waiting(
                "Waiting for deployment \"web\" rollout to finish: 2 out of 5 new replicas have been updated..."
            )
        );
        assert_eq!(
            rollout_status(&deployment(3, 5, st(3, 6, 5, 4))),
            waiting(
                "Waiting for deployment \"web\" rollout to finish: 1 old replicas are pending termination..."
            )
        );
        assert_eq!(
            rollout_status(&deployment(3, 5, st(3, 5, 5, 3))),
            waiting(
                "Waiting for deployment \"web\" rollout to finish: 3 of 5 updated replicas are available..."
            )
        );
        assert_eq!(
            rollout_status(&deployment(3, 5, st(3, 5, 5, 5))),
            Ok(Progress::Done(
                "deployment \"web\" successfully rolled out".into()
            ))
        );
        let mut stuck = st(3, 6, 2, 4);
        stuck.conditions.push(Condition {
            type_: "Progressing".into(),
            status: "False".into(),
            reason: "ProgressDeadlineExceeded".into(),
            ..Condition::default()
        });
        let err = rollout_status(&deployment(3, 5, stuck)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "deployment \"web\" exceeded its progress deadline"
        );
    }

    fn rs(revision: Option<&str>, image: &str, cause: Option<&str>) -> ReplicaSet {
        let mut rs = ReplicaSet::default();
        if let Some(r) = revision {
            rs.metadata.annotations.insert(REVISION.into(), r.into());
        }
        if let Some(c) = cause {
            rs.metadata
                .annotations
                .insert(CHANGE_CAUSE.into(), c.into());
        }
        rs.spec
            .template
            .metadata
            .labels
            .insert("app".into(), "web".into());
        rs.spec
            .template
            .metadata
            .labels
            .insert(POD_TEMPLATE_HASH.into(), format!("h-{image}"));
        rs.spec.template.spec.containers.push(Default::default());
        rs.spec.template.spec.containers[0].image = image.into();
        rs
    }

    #[test]
    fn history_lists_revisions_in_order_with_their_change_cause() {
        let table = history_table(&[
            rs(Some("3"), "c", None),
            rs(Some("1"), "a", Some("first")),
            rs(None, "x", None),
            rs(Some("2"), "b", None),
        ]);
        assert_eq!(
            table,
            "REVISION  CHANGE-CAUSE\n1         first\n2         <none>\n3         <none>\n"
        );
    }

    #[test]
    fn undo_picks_the_previous_or_the_named_revision() {
        let rss = [
            rs(Some("3"), "c", None),
            rs(Some("1"), "a", None),
            rs(Some("2"), "b", None),
        ];
        let image = |rs: &ReplicaSet| rs.spec.template.spec.containers[0].image.clone();
        assert_eq!(image(rollback_target(&rss, 0, "web").unwrap()), "b");
        assert_eq!(image(rollback_target(&rss, 1, "web").unwrap()), "a");
        assert_eq!(
            rollback_target(&rss, 7, "web").unwrap_err().to_string(),
            "unable to find specified revision 7 in history"
        );
        assert_eq!(
            rollback_target(&rss[..1], 0, "web").unwrap_err(),
            RolloutError::NoHistory { name: "web".into() }
        );
        let t = without_hash(&rss[0].spec.template);
        assert!(!t.metadata.labels.contains_key(POD_TEMPLATE_HASH));
        assert_eq!(
            t.metadata.labels.get("app").map(String::as_str),
            Some("web")
        );
    }

    fn parse(a: &[&str]) -> std::result::Result<RolloutCommand, clap::Error> {
        use clap::Parser;
        let cli = crate::Cli::try_parse_from(std::iter::once("skiffctl").chain(a.iter().copied()))?;
        match cli.command {
            crate::cli::Command::Rollout(c) => Ok(c),
            other => panic!("not rollout: {other:?}"),
        }
    }

    #[test]
    fn the_command_line_takes_kubectls_flags() {
        let status = |a: &[&str]| match parse(a).expect("parses") {
            RolloutCommand::Status(s) => (s.target.resource, s.watch, s.timeout),
            other => panic!("not status: {other:?}"),
        };
        assert_eq!(
            status(&["rollout", "status", "deployment/web"]),
            (args(&["deployment/web"]), true, Duration::ZERO)
        );
        assert_eq!(
            status(&[
                "rollout",
                "status",
                "deploy",
                "web",
                "-w=false",
                "--timeout",
                "5m"
            ]),
            (args(&["deploy", "web"]), false, Duration::from_secs(300))
        );
        assert!(!status(&["rollout", "status", "deploy/web", "--watch=false"]).1);
        assert!(status(&["rollout", "status", "deploy/web", "-w"]).1);
        assert!(status(&["rollout", "status", "-w=true", "deploy/web"]).1);
        assert!(parse(&["rollout", "status", "deploy/web", "--timeout", "soon"]).is_err());
        assert!(parse(&["rollout", "status"]).is_err());
        assert!(matches!(
            parse(&["rollout", "undo", "deploy/web", "--to-revision", "2"]),
            Ok(RolloutCommand::Undo(UndoArgs { to_revision: 2, .. }))
        ));
        assert!(matches!(
            parse(&["rollout", "history", "deploy/web", "--revision=3"]),
            Ok(RolloutCommand::History(HistoryArgs { revision: 3, .. }))
        ));
        assert!(matches!(
            parse(&["rollout", "pause", "deploy", "web"]),
            Ok(RolloutCommand::Pause(_))
        ));
        assert!(matches!(
            parse(&["rollout", "resume", "deploy/web", "-n", "team"]),
            Ok(RolloutCommand::Resume(_))
        ));
    }

    #[test]
    fn durations_read_like_go() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        for bad in ["", "5", "m", "5x", "-1s", "1s5"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
