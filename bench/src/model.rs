//! What the benchmark measures and records: the paths compared, the metrics, one sample per
//! measurement, and the service set every mode is given.

use std::net::{Ipv4Addr, SocketAddrV4};

use serde::{Deserialize, Serialize};

/// A path a packet can take from the client pod to a Service backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Client to the backend pod's address: no service translation (the floor).
    Direct,
    /// Client to the VIP through Skiff's eBPF datapath.
    Skiff,
    /// Client to the VIP through kube-proxy-style iptables rules.
    Iptables,
    /// Client to the VIP through kube-proxy-style nftables rules.
    Nftables,
}

impl Mode {
    pub const ALL: [Mode; 4] = [Mode::Direct, Mode::Skiff, Mode::Iptables, Mode::Nftables];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Skiff => "skiff",
            Mode::Iptables => "iptables",
            Mode::Nftables => "nftables",
        }
    }
}

/// Whether a larger or a smaller figure is the better one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    Higher,
    Lower,
}

/// Everything the benchmark measures. Each sample is one figure of one metric from one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Persistent TCP connection, 64-byte request and response, one at a time.
    RrP50Us,
    RrP99Us,
    RrP999Us,
    RrRate,
    /// A new TCP connection per 64-byte request/response (connect, exchange, close).
    CrrRate,
    CrrP50Us,
    CrrP99Us,
    CrrP999Us,
    /// CPU (system + softirq, all CPUs) per connection during the connection-per-request run.
    CrrCpuUs,
    /// wrk against nginx with keep-alive.
    WrkKeepaliveRps,
    WrkKeepaliveP50Us,
    WrkKeepaliveP99Us,
    WrkKeepaliveP999Us,
    /// CPU (system + softirq, all CPUs) per HTTP request during the keep-alive wrk run.
    WrkKeepaliveCpuUs,
    /// wrk against nginx with `Connection: close` (a connection per request).
    WrkCloseRps,
    WrkCloseP50Us,
    WrkCloseP99Us,
    WrkCloseP999Us,
    /// CPU (system + softirq, all CPUs) per HTTP request during the connection-per-request wrk run.
    WrkCloseCpuUs,
    /// iperf3, one TCP stream, receiver's figure.
    IperfGbps,
    /// Programming from nothing to all N Services ready.
    ProgramAllMs,
    /// One endpoint change at N Services: the programming operation (map writes, one
    /// iptables-restore, one nft transaction) from start until it returned.
    ProgramChangeUs,
    /// One endpoint change at N Services: from the start of the change until a client's new
    /// connection was first answered by the new endpoint.
    ProgramChangeServedUs,
}

impl Metric {
    pub const ALL: [Metric; 23] = [
        Metric::RrP50Us,
        Metric::RrP99Us,
        Metric::RrP999Us,
        Metric::RrRate,
        Metric::CrrRate,
        Metric::CrrP50Us,
        Metric::CrrP99Us,
        Metric::CrrP999Us,
        Metric::CrrCpuUs,
        Metric::WrkKeepaliveRps,
        Metric::WrkKeepaliveP50Us,
        Metric::WrkKeepaliveP99Us,
        Metric::WrkKeepaliveP999Us,
        Metric::WrkKeepaliveCpuUs,
        Metric::WrkCloseRps,
        Metric::WrkCloseP50Us,
        Metric::WrkCloseP99Us,
        Metric::WrkCloseP999Us,
        Metric::WrkCloseCpuUs,
        Metric::IperfGbps,
        Metric::ProgramAllMs,
        Metric::ProgramChangeUs,
        Metric::ProgramChangeServedUs,
    ];

    /// Stable identifier (the JSON name).
    pub fn id(self) -> &'static str {
        self.info().0
    }

    /// What a reader of the report sees.
    pub fn title(self) -> &'static str {
        self.info().1
    }

    pub fn unit(self) -> &'static str {
        self.info().2
    }

    pub fn better(self) -> Better {
        self.info().3
    }

    /// Whether the direct path has this figure (it has nothing to program).
    pub fn applies_to(self, mode: Mode) -> bool {
        !(mode == Mode::Direct
            && matches!(
                self,
                Metric::ProgramAllMs | Metric::ProgramChangeUs | Metric::ProgramChangeServedUs
            ))
    }

    fn info(self) -> (&'static str, &'static str, &'static str, Better) {
        use Better::{Higher, Lower};
        match self {
            Metric::RrP50Us => ("rr_p50_us", "TCP request/response latency p50", "µs", Lower),
            Metric::RrP99Us => ("rr_p99_us", "TCP request/response latency p99", "µs", Lower),
            Metric::RrP999Us => (
                "rr_p999_us",
                "TCP request/response latency p99.9",
                "µs",
                Lower,
            ),
            Metric::RrRate => ("rr_rate", "TCP request/response rate", "req/s", Higher),
            Metric::CrrRate => ("crr_rate", "New connections per second", "conn/s", Higher),
            Metric::CrrP50Us => (
                "crr_p50_us",
                "New connection + request latency p50",
                "µs",
                Lower,
            ),
            Metric::CrrP99Us => (
                "crr_p99_us",
                "New connection + request latency p99",
                "µs",
                Lower,
            ),
            Metric::CrrP999Us => (
                "crr_p999_us",
                "New connection + request latency p99.9",
                "µs",
                Lower,
            ),
            Metric::CrrCpuUs => (
                "crr_cpu_us",
                "CPU (system + softirq) per new connection",
                "µs",
                Lower,
            ),
            Metric::WrkKeepaliveRps => (
                "wrk_keepalive_rps",
                "HTTP requests per second, keep-alive (wrk, nginx)",
                "req/s",
                Higher,
            ),
            Metric::WrkKeepaliveP50Us => (
                "wrk_keepalive_p50_us",
                "HTTP latency p50, keep-alive",
                "µs",
                Lower,
            ),
            Metric::WrkKeepaliveP99Us => (
                "wrk_keepalive_p99_us",
                "HTTP latency p99, keep-alive",
                "µs",
                Lower,
            ),
            Metric::WrkKeepaliveP999Us => (
                "wrk_keepalive_p999_us",
                "HTTP latency p99.9, keep-alive",
                "µs",
                Lower,
            ),
            Metric::WrkKeepaliveCpuUs => (
                "wrk_keepalive_cpu_us",
                "CPU (system + softirq) per HTTP request, keep-alive",
                "µs",
                Lower,
            ),
            Metric::WrkCloseRps => (
                "wrk_close_rps",
                "HTTP requests per second, connection per request (wrk, nginx)",
                "req/s",
                Higher,
            ),
            Metric::WrkCloseP50Us => (
                "wrk_close_p50_us",
                "HTTP latency p50, connection per request",
                "µs",
                Lower,
            ),
            Metric::WrkCloseP99Us => (
                "wrk_close_p99_us",
                "HTTP latency p99, connection per request",
                "µs",
                Lower,
            ),
            Metric::WrkCloseP999Us => (
                "wrk_close_p999_us",
                "HTTP latency p99.9, connection per request",
                "µs",
                Lower,
            ),
            Metric::WrkCloseCpuUs => (
                "wrk_close_cpu_us",
                "CPU (system + softirq) per HTTP request, connection per request",
                "µs",
                Lower,
            ),
            Metric::IperfGbps => (
                "iperf_gbps",
                "Bulk TCP throughput (iperf3, one stream)",
                "Gbit/s",
                Higher,
            ),
            Metric::ProgramAllMs => (
                "program_all_ms",
                "Programming all N Services from empty",
                "ms",
                Lower,
            ),
            Metric::ProgramChangeUs => (
                "program_change_us",
                "One endpoint change at N Services: programming",
                "µs",
                Lower,
            ),
            Metric::ProgramChangeServedUs => (
                "program_change_served_us",
                "One endpoint change at N Services: until served",
                "µs",
                Lower,
            ),
        }
    }
}

/// One figure from one run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sample {
    /// Number of Services in the set.
    pub scale: usize,
    pub mode: Mode,
    /// Which repetition (0-based).
    pub rep: usize,
    pub metric: Metric,
    pub value: f64,
}

/// How the run was configured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Settings {
    pub quick: bool,
    pub scales: Vec<usize>,
    pub repetitions: usize,
    /// Seconds per traffic measurement.
    pub duration_secs: f64,
    pub endpoints_per_service: usize,
    pub wrk_threads: usize,
    pub wrk_connections: usize,
    pub crr_workers: usize,
    /// How the measured Service's place in kube-proxy's rule order was chosen.
    pub position_rule: String,
    /// Seconds of unmeasured load through each path before its measured runs.
    #[serde(default)]
    pub warmup_secs: f64,
    /// The order the paths ran in, one list per repetition (the same order at every scale).
    #[serde(default)]
    pub orders: Vec<Vec<Mode>>,
    /// Seed of the shuffle that picks orders once the balanced Latin square is used up.
    #[serde(default)]
    pub order_seed: u64,
    /// Which CPUs the client side and the server side ran on.
    #[serde(default)]
    pub cpus: CpuPinning,
}

/// Where the load generators and the servers ran. Both lists are empty when nothing was
/// pinned (fewer than two CPUs available to the run).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuPinning {
    /// The CPUs the run was allowed to use (its affinity mask at start).
    pub available: Vec<usize>,
    /// wrk, the iperf3 client and the benchmark's own client threads.
    pub client: Vec<usize>,
    /// nginx, the iperf3 server and the benchmark's own request/response servers.
    pub server: Vec<usize>,
}

impl CpuPinning {
    pub fn pinned(&self) -> bool {
        !self.client.is_empty() && !self.server.is_empty()
    }
}

/// Where the figures come from: machine, kernel, tool versions, and what is not compared.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Meta {
    /// UTC, RFC 3339.
    pub started: String,
    pub finished: String,
    pub hostname: String,
    pub cpu_model: String,
    pub cpus: usize,
    pub memory_gib: f64,
    pub kernel: String,
    /// Tool name -> the version line it printed.
    pub tools: Vec<(String, String)>,
    /// Free-form facts the report states (e.g. why IPVS is not compared).
    pub notes: Vec<String>,
}

/// Everything one run produced: the raw JSON file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Results {
    pub meta: Meta,
    pub settings: Settings,
    pub samples: Vec<Sample>,
    /// Derived from `samples` when the file is written: every path's spread against itself.
    #[serde(default)]
    pub noise: Vec<CellNoise>,
    /// Derived from `samples` when the file is written: skiff's ratios with their noise.
    #[serde(default)]
    pub ratios: Vec<RatioNoise>,
}

/// One path measured against itself: the spread of one (scale, mode, metric) over the
/// repetitions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CellNoise {
    pub scale: usize,
    pub mode: Mode,
    pub metric: Metric,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// Samples (repetitions) the figure is made of.
    pub n: usize,
    /// (max - min) / (2 * median): the repetitions lie within about ±noise of the median.
    /// `None` with fewer than two repetitions.
    pub noise: Option<f64>,
}

/// skiff's median over another path's, with the noise of the two paths added: how far the
/// ratio could move if each path moved only within its own spread.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RatioNoise {
    pub scale: usize,
    pub metric: Metric,
    /// The path skiff is divided by.
    pub other: Mode,
    pub ratio: f64,
    /// noise(skiff) + noise(other); `None` when either has fewer than two repetitions.
    pub noise: Option<f64>,
}

/// L4 protocol of a service port (the benchmark uses TCP only; the rule shapes carry it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// Lower-case name as iptables and nft write it.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// One port of a Service with its endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// The port's name in the Service (`http`, ...).
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
    pub endpoints: Vec<SocketAddrV4>,
}

/// A ClusterIP Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub vip: Ipv4Addr,
    pub ports: Vec<ServicePort>,
}

/// The Services every mode is given, in the order kube-proxy would write them (the order of
/// KUBE-SERVICES rules in iptables mode).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSet {
    pub services: Vec<Service>,
    /// The pod CIDR (kube-proxy's `--cluster-cidr`): traffic from outside it is marked for
    /// masquerade.
    pub cluster_cidr: (Ipv4Addr, u8),
}
