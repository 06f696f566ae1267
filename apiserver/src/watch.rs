//! Watch streams: served from the watch cache when it can (see `cache.rs`), otherwise from an
//! etcd watch of their own; filtered, resumed after breaks, with bookmarks and a "too old" error
//! when etcd has compacted the history asked for.

use std::{sync::Arc, time::Duration};

use etcd_client::{Event, EventType};
use skiff_api::{Object, ResourceInfo, proto::WatchEvent};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::Status;

use super::{
    cache::{CachedEvent, Subscription},
    error::ApiError,
    filter::Filter,
    objects::GenericStore,
    store::Store,
};

/// Attempts to re-establish a broken etcd watch before giving up on the client's stream.
const RESUME_ATTEMPTS: u32 = 20;
/// An etcd watch stream that lasted this long before breaking counts as having worked.
const HEALTHY_STREAM: Duration = Duration::from_secs(5);

/// What one API watch asked for.
#[derive(Debug, Clone)]
pub struct WatchSpec {
    pub info: &'static ResourceInfo,
    pub namespace: String,
    pub filter: Filter,
    /// Exclusive; 0 means "from now".
    pub after: i64,
    pub bookmarks: bool,
    pub bookmark_interval: Duration,
}

struct Gauge(Arc<super::metrics::Metrics>);

impl Drop for Gauge {
    fn drop(&mut self) {
        self.0.watch_ended();
    }
}

/// Streams events into `tx` until the client goes away or the history is gone.
pub async fn run(
    reg: Arc<GenericStore>,
    spec: WatchSpec,
    tx: mpsc::Sender<Result<WatchEvent, Status>>,
) {
    reg.metrics.watch_started();
    let _gauge = Gauge(reg.metrics.clone());
    if let Err(e) = serve(&reg, spec, &tx).await {
        // The client gets `client_message`; the whole story stays here.
        tracing::info!(error = %super::error::Chain(&e), "watch ended with an error");
        let _ = tx.send(Err(e.into())).await;
    }
}

async fn serve(
    reg: &GenericStore,
    mut spec: WatchSpec,
    tx: &mpsc::Sender<Result<WatchEvent, Status>>,
) -> Result<(), ApiError> {
    let sub = reg
        .cache
        .subscribe(spec.info, &spec.namespace, &spec.filter, spec.after)
        .await?;
    if let Some(sub) = sub {
        match from_cache(reg, &spec, sub, tx).await {
            // The client went away.
            None => return Ok(()),
            // The cache let go of this watch (it fell behind, or the cache's own etcd stream
            // failed): etcd takes over from the last revision delivered.
            Some(last) => spec.after = last,
        }
    }
    reg.metrics.watch_direct(1);
    let r = stream(reg, &spec, tx).await;
    reg.metrics.watch_direct(-1);
    r
}

/// Serves a watch from the cache; returns the last revision delivered when the cache lets go of
/// it, `None` when the client has gone.
async fn from_cache(
    reg: &GenericStore,
    spec: &WatchSpec,
    mut sub: Subscription,
    tx: &mpsc::Sender<Result<WatchEvent, Status>>,
) -> Option<i64> {
    let mut last = sub.after;
    let mut tick = tokio::time::interval(spec.bookmark_interval.max(Duration::from_millis(200)));
    tick.tick().await;
    let send = |ev: Arc<CachedEvent>, last: &mut i64| {
        *last = ev.revision;
        cached_event(&ev, &spec.filter).inspect(|_| reg.metrics.watch_event())
    };
    loop {
        tokio::select! {
            () = tx.closed() => return None,
            ev = sub.rx.recv() => {
                let Some(ev) = ev else { return Some(last) };
                if let Some(out) = send(ev, &mut last) {
                    tx.send(Ok(out)).await.ok()?;
                }
            }
            _ = tick.tick(), if spec.bookmarks => {
                // Everything up to the cache's revision is already queued for this watcher.
                let rev = sub.cache.revision();
                loop {
                    match sub.rx.try_recv() {
                        Ok(ev) => {
                            if let Some(out) = send(ev, &mut last) {
                                tx.send(Ok(out)).await.ok()?;
                            }
                        }
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        // The cache let go of this watch: what it has not queued is not
                        // covered by `rev`, so etcd takes over from here, without a bookmark.
                        Err(mpsc::error::TryRecvError::Disconnected) => return Some(last),
                    }
                }
                if rev > last {
                    last = rev;
                    tx.send(Ok(bookmark(rev))).await.ok()?;
                }
            }
        }
    }
}

async fn stream(
    reg: &GenericStore,
    spec: &WatchSpec,
    tx: &mpsc::Sender<Result<WatchEvent, Status>>,
) -> Result<(), ApiError> {
    let prefix = reg.store.prefix(spec.info, &spec.namespace);
    let mut last = if spec.after == 0 {
        reg.store.count(&prefix).await?.1
    } else {
        spec.after
    };
    // Consecutive attempts that delivered nothing new; reset only when `last` advances, so a
    // watch etcd keeps cancelling (or a stream that keeps breaking) ends with an error instead
    // of retrying forever.
    let mut stalled = 0;
    let mut reason = String::new();
    loop {
        if stalled >= RESUME_ATTEMPTS {
            return Err(ApiError::Unavailable(format!(
                "the watch could not be resumed after {stalled} attempts ({reason}); list and watch again"
            )));
        }
        if stalled > 0 {
            tokio::time::sleep(Duration::from_millis(50 * u64::from(stalled.min(10)))).await;
        }
        let started_at = last;
        let up_since = tokio::time::Instant::now();
        let watch = match reg.store.watch(&prefix, last).await {
            Ok(w) => w,
            Err(e) => {
                stalled += 1;
                tracing::debug!(error = %super::error::Chain(&e), last, "starting an etcd watch failed; retrying");
                reason = e.client_message();
                continue;
            }
        };
        let (mut requests, mut responses) = watch.split();
        let mut tick =
            tokio::time::interval(spec.bookmark_interval.max(Duration::from_millis(200)));
        tick.tick().await;
        let mut busy = true;
        loop {
            tokio::select! {
                () = tx.closed() => return Ok(()),
                _ = tick.tick(), if spec.bookmarks => {
                    // etcd answers with a progress notification once every event up to its
                    // revision has been sent on this stream. etcd before 3.4.25 could answer
                    // ahead of events a catching-up watcher had not been sent yet
                    // (etcd-io/etcd#15220), so ask only after a quiet interval, when the
                    // watcher has long caught up (etcd sends a lagging watcher's backlog every
                    // 100 ms).
                    if !busy {
                        let _ = requests.request_progress().await;
                    }
                    busy = false;
                }
                msg = responses.next() => {
                    let resp = match msg {
                        Some(Ok(resp)) => resp,
                        Some(Err(e)) => {
                            tracing::debug!(error = %super::error::Chain(&e), last, "etcd watch broke; resuming");
                            // Its text can name etcd's address, and it goes to the client.
                            reason = "the etcd watch stream broke".into();
                            break;
                        }
                        None => {
                            reason = "etcd closed the watch stream".into();
                            break;
                        }
                    };
                    if resp.canceled() {
                        if resp.compact_revision() > 0 {
                            return Err(ApiError::Gone { requested: last, compacted: resp.compact_revision() });
                        }
                        reason = format!("etcd cancelled the watch: {}", resp.cancel_reason());
                        break;
                    }
                    if resp.created() {
                        continue;
                    }
                    if resp.events().is_empty() {
                        let rev = resp.header().map_or(0, |h| h.revision());
                        if rev > last {
                            last = rev;
                            if spec.bookmarks && tx.send(Ok(bookmark(rev))).await.is_err() {
                                return Ok(());
                            }
                        }
                        continue;
                    }
                    busy = true;
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        last = kv.mod_revision();
                        match convert(&reg.store, ev, &spec.filter) {
                            Ok(Some(out)) => {
                                reg.metrics.watch_event();
                                if tx.send(Ok(out)).await.is_err() {
                                    return Ok(());
                                }
                            }
                            Ok(None) => {}
                            Err(e) => tracing::warn!(error = %e, "skipping an unreadable object in a watch"),
                        }
                    }
                }
            }
        }
        // A stream that delivered something, or stayed up a while, was healthy.
        if last == started_at && up_since.elapsed() < HEALTHY_STREAM {
            stalled += 1;
        } else {
            stalled = 0;
        }
    }
}

/// What a put is for one watcher, given whether its filter matched the object before (`None`:
/// there was no object) and matches it now: an object that stops matching is DELETED for this
/// watcher, one that starts matching is ADDED.
fn put_type(before: Option<bool>, now: bool) -> Option<&'static str> {
    match (before, now) {
        (None | Some(false), true) => Some("ADDED"),
        (Some(true), true) => Some("MODIFIED"),
        (Some(true), false) => Some("DELETED"),
        (_, false) => None,
    }
}

/// The API event for one cached event, seen through the watch's filter.
fn cached_event(ev: &CachedEvent, filter: &Filter) -> Option<WatchEvent> {
    let object = match &ev.new {
        None => {
            let prev = ev.prev.as_ref()?;
            if !filter.matches(prev) {
                return None;
            }
            ("DELETED", ev.deleted_json())
        }
        Some(new) => {
            let before = ev.prev.as_ref().map(|p| filter.matches(p));
            (put_type(before, filter.matches(new))?, ev.new_json())
        }
    };
    Some(WatchEvent {
        r#type: object.0.into(),
        object: object.1.to_vec(),
        resource_version: ev.revision,
    })
}

fn bookmark(rev: i64) -> WatchEvent {
    WatchEvent {
        r#type: "BOOKMARK".into(),
        object: Vec::new(),
        resource_version: rev,
    }
}

/// The API event for one etcd event, seen through the watch's filter: an object that stops
/// matching is DELETED for this watcher, one that starts matching is ADDED.
fn convert(store: &Store, ev: &Event, filter: &Filter) -> Result<Option<WatchEvent>, ApiError> {
    let Some(kv) = ev.kv() else { return Ok(None) };
    let rev = kv.mod_revision();
    let decode_prev = || {
        ev.prev_kv()
            .map(|p| {
                let mut s = store.stored(p);
                s.mod_revision = rev;
                s.decode()
            })
            .transpose()
    };
    let (type_, object): (&str, Object) = match ev.event_type() {
        EventType::Delete => match decode_prev()? {
            Some(p) if filter.matches(&p) => ("DELETED", p),
            _ => return Ok(None),
        },
        EventType::Put => {
            let new = store.stored(kv).decode()?;
            let now = filter.matches(&new);
            // Without a filter the previous value only says whether this is a creation; it is
            // decoded only when a selector has to judge it.
            let before = if filter.is_everything() {
                ev.prev_kv().map(|_| true)
            } else {
                decode_prev()?.map(|p| filter.matches(&p))
            };
            match put_type(before, now) {
                Some(t) => (t, new),
                None => return Ok(None),
            }
        }
    };
    Ok(Some(WatchEvent {
        r#type: type_.into(),
        object: object.to_json(),
        resource_version: rev,
    }))
}
