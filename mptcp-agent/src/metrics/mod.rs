//! Prometheus metrics: what the agent reads (the tracker's counters and tables, the daemon's
//! health, path state, congestion control, the balancer's statistics) as metric families,
//! gathered afresh on every scrape, encoded as OpenMetrics (or the Prometheus text format), and
//! the HTTP endpoint that serves them.

pub mod agent;
pub mod lb;
pub mod server;

use std::{fmt::Write as _, net::SocketAddr};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _, MetricEncoder},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

pub use crate::config::ListenAddr;

/// The content type of the OpenMetrics text format, what Prometheus asks for first.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of the Prometheus text format (0.0.4), served to clients that ask for
/// `text/plain` only (promtool, older scrapers).
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("binding the metrics endpoint to {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Table(#[from] crate::dataplane::tables::TableError),
    #[error(transparent)]
    Loader(#[from] crate::bpf::LoaderError),
    #[error(transparent)]
    Paths(#[from] crate::paths::PathError),
    #[error(transparent)]
    Congestion(#[from] crate::cc::CongestionError),
    #[error(transparent)]
    Balancer(#[from] crate::lb::SteeringError),
    #[error("installing the signal handlers")]
    Signal(#[source] std::io::Error),
    #[error("encoding the metrics")]
    Encode(#[from] std::fmt::Error),
}

/// The kind of a family, as both formats name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    /// Labels worth knowing, value 1 (`NAME_info`).
    Info,
}

/// A sample's value: integers stay integers in the text (Prometheus reads both as f64).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Int(u64),
    Float(f64),
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Int(value) => value.fmt(f),
            Value::Float(value) => value.fmt(f),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: Vec<(&'static str, String)>,
    pub value: Value,
}

/// One metric family: its name without the `_total` / `_info` suffix the formats add.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub name: String,
    pub help: &'static str,
    pub kind: Kind,
    pub samples: Vec<Sample>,
}

impl Family {
    /// The name its samples carry.
    pub fn sample_name(&self) -> String {
        match self.kind {
            Kind::Counter => format!("{}_total", self.name),
            Kind::Gauge => self.name.clone(),
            Kind::Info => format!("{}_info", self.name),
        }
    }
}

/// The families of one scrape, in the order first named.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Families(pub Vec<Family>);

impl Families {
    fn family(&mut self, name: &str, help: &'static str, kind: Kind) -> &mut Family {
        let position = match self.0.iter().position(|family| family.name == name) {
            Some(position) => position,
            None => {
                self.0.push(Family { name: name.to_owned(), help, kind, samples: Vec::new() });
                self.0.len() - 1
            }
        };
        &mut self.0[position]
    }

    /// Declares a family that may have no sample this scrape (so it is always described).
    pub fn declare(&mut self, name: &str, help: &'static str, kind: Kind) {
        self.family(name, help, kind);
    }

    pub fn counter(
        &mut self,
        name: &str,
        help: &'static str,
        labels: Vec<(&'static str, String)>,
        value: u64,
    ) {
        self.family(name, help, Kind::Counter).samples.push(Sample { labels, value: Value::Int(value) });
    }

    /// A gauge of a count.
    pub fn count(&mut self, name: &str, help: &'static str, labels: Vec<(&'static str, String)>, value: u64) {
        self.family(name, help, Kind::Gauge).samples.push(Sample { labels, value: Value::Int(value) });
    }

    pub fn gauge(&mut self, name: &str, help: &'static str, labels: Vec<(&'static str, String)>, value: f64) {
        self.family(name, help, Kind::Gauge).samples.push(Sample { labels, value: Value::Float(value) });
    }

    pub fn info(&mut self, name: &str, help: &'static str, labels: Vec<(&'static str, String)>) {
        self.family(name, help, Kind::Info).samples.push(Sample { labels, value: Value::Int(1) });
    }

    pub fn extend(&mut self, other: Families) {
        self.0.extend(other.0);
    }

    /// The OpenMetrics text: a registry whose one collector is this scrape.
    pub fn openmetrics(self) -> Result<String, MetricsError> {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry)?;
        Ok(text)
    }

    /// The Prometheus text format 0.0.4, which promtool and older scrapers read (it has no info
    /// type and names a counter's family with its `_total`).
    pub fn prometheus_text(&self) -> Result<String, MetricsError> {
        let mut text = String::new();
        for family in &self.0 {
            let name = family.sample_name();
            let kind = if family.kind == Kind::Counter { "counter" } else { "gauge" };
            writeln!(text, "# HELP {name} {}", escape_help(family.help))?;
            writeln!(text, "# TYPE {name} {kind}")?;
            for sample in &family.samples {
                text.push_str(&name);
                if !sample.labels.is_empty() {
                    let labels: Vec<String> = sample
                        .labels
                        .iter()
                        .map(|(key, value)| format!("{key}=\"{}\"", escape_label(value)))
                        .collect();
                    write!(text, "{{{}}}", labels.join(","))?;
                }
                writeln!(text, " {}", sample.value)?;
            }
        }
        Ok(text)
    }
}

fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Label values escaped as both formats want (the encoder writes them as given).
fn escape_label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for family in &self.0 {
            let kind = match family.kind {
                Kind::Counter => MetricType::Counter,
                Kind::Gauge => MetricType::Gauge,
                Kind::Info => MetricType::Info,
            };
            let mut metric = encoder.encode_descriptor(&family.name, family.help, None, kind)?;
            match family.samples.as_slice() {
                // Alone and without labels: encoded as itself (as a family it would read `name{}`).
                [sample] if sample.labels.is_empty() && family.kind != Kind::Info => {
                    encode_value(family.kind, sample.value, metric)?
                }
                samples => {
                    for sample in samples {
                        let labels: Vec<(&str, String)> =
                            sample.labels.iter().map(|(key, value)| (*key, escape_label(value))).collect();
                        if family.kind == Kind::Info {
                            metric.encode_info(&labels)?;
                        } else {
                            encode_value(family.kind, sample.value, metric.encode_family(&labels)?)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

fn encode_value(kind: Kind, value: Value, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
    match (kind, value) {
        (Kind::Counter, Value::Int(value)) => ConstCounter::new(value).encode(encoder),
        (Kind::Counter, Value::Float(value)) => ConstCounter::new(value).encode(encoder),
        (Kind::Gauge | Kind::Info, Value::Int(value)) => ConstGauge::new(value).encode(encoder),
        (Kind::Gauge | Kind::Info, Value::Float(value)) => ConstGauge::new(value).encode(encoder),
    }
}

/// Labels from `(key, value)` pairs whose values are anything displayable.
#[macro_export]
macro_rules! labels {
    ($($key:literal => $value:expr),* $(,)?) => {
        vec![$(($key, $value.to_string())),*]
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn families() -> Families {
        let mut families = Families::default();
        families.counter("mptcp_x", "Packets.", labels!("iface" => "a\"b", "direction" => "ingress"), 3);
        families.counter("mptcp_x", "Packets.", labels!("iface" => "c", "direction" => "egress"), 4);
        families.gauge("mptcp_y_seconds", "Age.", Vec::new(), 1.5);
        families.info("mptcp_lb_maglev", "Digest.", labels!("vip" => "192.0.2.1:80", "digest" => "ab"));
        families.declare("mptcp_empty", "Nothing yet.", Kind::Gauge);
        families
    }

    #[test]
    fn openmetrics_has_suffixes_escapes_and_eof() {
        let text = families().openmetrics().unwrap();
        assert!(text.contains("# TYPE mptcp_x counter\n"), "{text}");
        assert!(text.contains("mptcp_x_total{iface=\"a\\\"b\",direction=\"ingress\"} 3\n"), "{text}");
        assert!(text.contains("mptcp_y_seconds 1.5\n"), "{text}");
        assert!(!text.contains("{}") && !text.contains("{,"), "{text}");
        assert!(text.contains("mptcp_lb_maglev_info{vip=\"192.0.2.1:80\",digest=\"ab\"} 1\n"), "{text}");
        assert!(text.contains("# TYPE mptcp_empty gauge\n"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn prometheus_text_names_families_by_their_samples() {
        let text = families().prometheus_text().unwrap();
        assert!(text.contains(
            "# TYPE mptcp_x_total counter\nmptcp_x_total{iface=\"a\\\"b\",direction=\"ingress\"} 3\n"
        ));
        assert!(text.contains("# TYPE mptcp_lb_maglev_info gauge\n"), "{text}");
        assert!(!text.contains("EOF"));
    }
}
