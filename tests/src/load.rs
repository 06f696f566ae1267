//! Traffic from inside a pod's network namespace for the end-to-end tests: a steady load of
//! HTTP requests (each a new TCP connection, paced at a fixed interval) that records every
//! outcome with its time, long-lived line connections, and a sweep over many Service addresses.
//! Every socket is made on a thread that entered the pod's namespace, so all traffic starts
//! there (the safety rule in shared/DESIGN.md).

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, SocketAddrV4, TcpStream},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};

/// One HTTP/1.0 GET / on a new connection, every phase bounded by `timeout`; the body (a web
/// pod answers with its name), or why there was none.
pub fn http_get(addr: SocketAddrV4, timeout: Duration) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&SocketAddr::V4(addr), timeout)
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .and_then(|()| s.set_write_timeout(Some(timeout)))
        .map_err(|e| format!("socket: {e}"))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: skiff-e2e\r\n\r\n")
        .map_err(|e| format!("send: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| format!("receive: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no complete response ({} bytes)", raw.len()))?;
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200") {
        return Err(format!("status {status:?}"));
    }
    Ok(body.trim().to_owned())
}

/// One request of a load: when it started, how long it took, and what came back.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Instant,
    pub took: Duration,
    pub outcome: Result<String, String>,
}

/// A steady load running on its own thread inside a pod's namespace.
#[derive(Debug)]
pub struct Load {
    target: SocketAddrV4,
    started: Instant,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<Vec<Sample>>>,
}

impl Load {
    /// Starts one request every `interval` (the next starts at once when one took longer),
    /// from the namespace at `netns` to `target`.
    pub fn start(
        netns: &Path,
        target: SocketAddrV4,
        interval: Duration,
        timeout: Duration,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let netns: PathBuf = netns.to_owned();
        let started = Instant::now();
        let thread = thread::spawn(move || {
            skiff_testbed::netns::enter(&netns)?;
            let mut samples = Vec::new();
            let mut next = Instant::now();
            while !flag.load(Ordering::Relaxed) {
                let at = Instant::now();
                let outcome = http_get(target, timeout);
                samples.push(Sample {
                    at,
                    took: at.elapsed(),
                    outcome,
                });
                next += interval;
                let now = Instant::now();
                if next > now {
                    thread::sleep(next - now);
                } else {
                    next = now;
                }
            }
            Ok(samples)
        });
        Load {
            target,
            started,
            stop,
            thread,
        }
    }

    /// Stops the load and returns what it saw.
    pub fn stop(self) -> Result<LoadReport> {
        self.stop.store(true, Ordering::Relaxed);
        let samples = self
            .thread
            .join()
            .map_err(|_| anyhow!("the load thread panicked"))??;
        Ok(LoadReport {
            target: self.target,
            started: self.started,
            samples,
        })
    }
}

/// What a load saw.
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub target: SocketAddrV4,
    pub started: Instant,
    pub samples: Vec<Sample>,
}

impl LoadReport {
    pub fn failures(&self) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.outcome.is_err()).collect()
    }

    /// Answers per backend.
    pub fn by_backend(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for s in &self.samples {
            if let Ok(b) = &s.outcome {
                *m.entry(b.clone()).or_default() += 1;
            }
        }
        m
    }

    /// When `backend` first answered.
    pub fn first_answer_from(&self, backend: &str) -> Option<Instant> {
        self.samples
            .iter()
            .find(|s| s.outcome.as_deref() == Ok(backend))
            .map(|s| s.at)
    }

    /// When `backend` last answered.
    pub fn last_answer_from(&self, backend: &str) -> Option<Instant> {
        self.samples
            .iter()
            .rev()
            .find(|s| s.outcome.as_deref() == Ok(backend))
            .map(|s| s.at)
    }

    /// Requests per second over the whole run.
    pub fn rate(&self) -> f64 {
        match (self.samples.first(), self.samples.last()) {
            (Some(a), Some(b)) if b.at > a.at => {
                self.samples.len() as f64 / (b.at - a.at).as_secs_f64()
            }
            _ => 0.0,
        }
    }

    /// Latency percentile (0..=100) of the answered requests, in milliseconds.
    pub fn latency_ms(&self, pct: f64) -> f64 {
        let mut v: Vec<f64> = self
            .samples
            .iter()
            .filter(|s| s.outcome.is_ok())
            .map(|s| s.took.as_secs_f64() * 1e3)
            .collect();
        percentile(&mut v, pct)
    }

    /// One line: requests, failures, rate, latency, answers per backend.
    pub fn summary(&self) -> String {
        format!(
            "{} requests to {} at {:.0}/s, {} failed, latency p50 {:.1} ms p99 {:.1} ms, answers {:?}",
            self.samples.len(),
            self.target,
            self.rate(),
            self.failures().len(),
            self.latency_ms(50.0),
            self.latency_ms(99.0),
            self.by_backend()
        )
    }

    /// The failures, one line each with their time since the load started (for messages).
    pub fn describe_failures(&self, limit: usize) -> String {
        self.failures()
            .iter()
            .take(limit)
            .map(|s| {
                format!(
                    "at {:.3} s: {}",
                    (s.at - self.started).as_secs_f64(),
                    s.outcome.as_ref().err().map_or("", String::as_str)
                )
            })
            .collect::<Vec<_>>()
            .join("\n  ")
    }
}

/// A long-lived TCP connection to a line server that answers each line with its pod's name
/// (the e2e web pods' `stream` port).
#[derive(Debug)]
pub struct LineConn {
    reader: BufReader<TcpStream>,
}

impl LineConn {
    /// Connects from inside the namespace at `netns`.
    pub fn open(netns: &Path, addr: SocketAddrV4, timeout: Duration) -> Result<LineConn> {
        let s = skiff_testbed::netns::run_in(netns, || {
            TcpStream::connect_timeout(&SocketAddr::V4(addr), timeout)
        })?
        .with_context(|| format!("connecting to {addr}"))?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        s.set_nodelay(true)?;
        Ok(LineConn {
            reader: BufReader::new(s),
        })
    }

    /// Sends a line and returns the answer.
    pub fn ask(&mut self) -> Result<String> {
        self.reader
            .get_mut()
            .write_all(b"who\n")
            .context("sending a line")?;
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .context("reading the answer")?;
        if n == 0 {
            bail!("the server closed the connection");
        }
        Ok(line.trim().to_owned())
    }
}

/// From inside `netns`, one request to each address in turn; whether each was answered (by
/// anything: the caller checks what answered when it matters).
pub fn sweep(netns: &Path, targets: &[SocketAddrV4], timeout: Duration) -> Result<Vec<bool>> {
    Ok(skiff_testbed::netns::run_in(netns, || {
        targets
            .iter()
            .map(|t| http_get(*t, timeout).is_ok())
            .collect()
    })?)
}

/// The nearest-rank percentile (0..=100) of `v` (sorted in place); 0 when empty.
pub fn percentile(v: &mut [f64], pct: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((pct / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}
