//! A real Prometheus scraping an endpoint inside a namespace, queried over its HTTP API; a
//! minimal HTTP client for the endpoint itself; and the metric names the Grafana dashboard uses.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;

use crate::{TempDir, netns::Netns};

/// Debian's Prometheus (`cargo xtask setup` installs it); its service is never started.
const PROMETHEUS: &str = "/usr/bin/prometheus";
const PROMTOOL: &str = "/usr/bin/promtool";
/// The scrape job's name.
pub const JOB: &str = "mptcp";

/// An HTTP response, whole.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

/// `GET path` on `addr` from inside `ns` (HTTP/1.1, one request per connection).
pub fn get(ns: &Netns, addr: SocketAddr, path: &str, accept: Option<&str>) -> Result<Response> {
    let stream = ns.within(move || TcpStream::connect_timeout(&addr, Duration::from_secs(2)))??;
    request(stream, addr, path, accept)
}

fn request(mut stream: TcpStream, addr: SocketAddr, path: &str, accept: Option<&str>) -> Result<Response> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let accept = accept.map(|accept| format!("Accept: {accept}\r\n")).unwrap_or_default();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).with_context(|| format!("reading the answer to GET {path} from {addr}"))?;
    let raw = String::from_utf8(raw).context("an answer that is not UTF-8")?;
    let (head, body) = raw.split_once("\r\n\r\n").with_context(|| format!("no header end in {raw:?}"))?;
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("no status in {status_line:?}"))?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    Ok(Response { status, headers, body: body.to_owned() })
}

/// Whether something accepts connections on `addr` inside `ns`.
pub fn listening(ns: &Netns, addr: SocketAddr) -> bool {
    ns.within(move || TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()).unwrap_or(false)
}

/// A free TCP port on 127.0.0.1 inside `ns`.
pub fn free_port(ns: &Netns) -> Result<u16> {
    let port =
        ns.within(|| TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()))??;
    Ok(port)
}

/// `promtool check metrics` on `text`: its complaints, or nothing.
pub fn promtool_check(text: &str) -> Result<()> {
    let mut child = std::process::Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running promtool (cargo xtask setup installs it)")?;
    child.stdin.take().context("promtool stdin")?.write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Prometheus in `ns`, scraping `target` every second; killed, its storage removed, on drop.
pub struct Prometheus<'a> {
    ns: &'a Netns,
    child: Option<Child>,
    pub web: SocketAddr,
    dir: TempDir,
}

impl<'a> Prometheus<'a> {
    pub fn start(ns: &'a Netns, target: SocketAddr) -> Result<Self> {
        let dir = TempDir::new("prom")?;
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: {JOB}\n    \
                 static_configs:\n      - targets: ['{target}']\n"
            ),
        )?;
        let web = SocketAddr::from(([127, 0, 0, 1], free_port(ns)?));
        let arg = |flag: &str, path: &Path| format!("{flag}={}", path.display());
        let log = std::fs::File::create(dir.path().join("prometheus.log"))?;
        let child = ns
            .nsenter_cmd(PROMETHEUS)
            .args([
                arg("--config.file", &config),
                arg("--storage.tsdb.path", &dir.path().join("data")),
                format!("--web.listen-address={web}"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting prometheus (cargo xtask setup installs it)")?;
        let prometheus = Self { ns, child: Some(child), web, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !prometheus.ready() {
            if Instant::now() > deadline {
                bail!("prometheus not ready within 20 s:\n{}", prometheus.log());
            }
            thread::sleep(Duration::from_millis(100));
        }
        Ok(prometheus)
    }

    fn ready(&self) -> bool {
        get(self.ns, self.web, "/-/ready", None).is_ok_and(|r| r.status == 200)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// An instant PromQL query: each series' labels (its `__name__` included) and value.
    pub fn query(&self, promql: &str) -> Result<Vec<(BTreeMap<String, String>, f64)>> {
        let response =
            get(self.ns, self.web, &format!("/api/v1/query?query={}", percent_encode(promql)), None)?;
        let json: Value = serde_json::from_str(&response.body)
            .with_context(|| format!("query {promql}: not JSON: {}", response.body))?;
        ensure!(json["status"] == "success", "query {promql}: {json}");
        let series = json["data"]["result"].as_array().with_context(|| format!("query {promql}: {json}"))?;
        series
            .iter()
            .map(|one| {
                let labels = one["metric"]
                    .as_object()
                    .map(|labels| {
                        labels
                            .iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                            .collect()
                    })
                    .unwrap_or_default();
                let value = one["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .with_context(|| format!("query {promql}: no value in {one}"))?;
                Ok((labels, value))
            })
            .collect()
    }

    /// The one value of a query that names one series; an error for none or several.
    pub fn value(&self, promql: &str) -> Result<f64> {
        match self.query(promql)?.as_slice() {
            [(_, value)] => Ok(*value),
            other => bail!("query {promql}: {} series, expected one: {other:?}", other.len()),
        }
    }

    /// Waits (20 s at most) until the job was scraped successfully after `since`.
    pub fn scraped_after(&self, since: SystemTime) -> Result<()> {
        let since = since.duration_since(UNIX_EPOCH)?.as_secs_f64();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let up = self.query(&format!("up{{job=\"{JOB}\"}}"))?;
            let at = self.query(&format!("timestamp(up{{job=\"{JOB}\"}})"))?;
            if let ([(_, up)], [(_, at)]) = (up.as_slice(), at.as_slice())
                && *up == 1.0
                && *at > since
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("no successful scrape after {since}: up {up:?} at {at:?}\n{}", self.log());
            }
            thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Prometheus<'_> {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The sample names an OpenMetrics exposition describes (`# TYPE` lines, with the `_total` of
/// counters and the `_info` of info metrics), samples or not.
pub fn exposed_names(openmetrics: &str) -> BTreeSet<String> {
    openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .map(|(name, kind)| match kind {
            "counter" => format!("{name}_total"),
            "info" => format!("{name}_info"),
            _ => name.to_owned(),
        })
        .collect()
}

/// Every metric name (`mptcp_...`) in the PromQL expressions of a Grafana dashboard.
pub fn dashboard_metric_names(dashboard: &Value) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut exprs = Vec::new();
    collect_exprs(dashboard, &mut exprs);
    for expr in exprs {
        let mut rest = expr.as_str();
        while let Some(start) = rest.find("mptcp_") {
            let tail = &rest[start..];
            let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
            names.insert(tail[..end].to_owned());
            rest = &tail[end..];
        }
    }
    names
}

fn collect_exprs(value: &Value, exprs: &mut Vec<String>) {
    match value {
        Value::Object(fields) => {
            for (key, field) in fields {
                match (key.as_str(), field) {
                    ("expr", Value::String(expr)) => exprs.push(expr.clone()),
                    _ => collect_exprs(field, exprs),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect_exprs(item, exprs)),
        _ => {}
    }
}

/// The dashboard in the repository.
pub fn dashboard() -> Result<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/mptcp-dataplane.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}
