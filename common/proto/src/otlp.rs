//! OpenTelemetry metrics in the OTLP/HTTP JSON encoding (`ExportMetricsServiceRequest`), built
//! through [`MetricsPage`] from the same calls that write the Prometheus page: gauges stay
//! gauges, counters become cumulative monotonic sums, latency histograms keep their bounds.

use serde_json::{Value, json};

use crate::prometheus::{Kind, LATENCY_BOUNDS_US, MetricsPage};
use crate::telemetry::Histogram;

/// `Content-Type` of the request.
pub const CONTENT_TYPE: &str = "application/json";
/// Path of the metrics endpoint under a collector's base URL.
pub const METRICS_PATH: &str = "/v1/metrics";
/// `AGGREGATION_TEMPORALITY_CUMULATIVE`.
const CUMULATIVE: u8 = 2;

#[derive(Debug)]
struct Family {
    name: String,
    kind: Kind,
    help: String,
    points: Vec<Value>,
}

/// One export request being built.
#[derive(Debug)]
pub struct OtlpMetrics {
    /// Start of the cumulative series (the control plane's start) and the sample time, in
    /// nanoseconds since the epoch, as decimal strings (OTLP JSON encodes 64-bit integers so).
    start_ns: String,
    now_ns: String,
    families: Vec<Family>,
}

fn attributes(pairs: &[(&str, &str)]) -> Value {
    Value::Array(
        pairs
            .iter()
            .map(|(k, v)| json!({"key": k, "value": {"stringValue": v}}))
            .collect(),
    )
}

impl OtlpMetrics {
    pub fn new(start_ms: u64, now_ms: u64) -> Self {
        Self {
            start_ns: (u128::from(start_ms) * 1_000_000).to_string(),
            now_ns: (u128::from(now_ms) * 1_000_000).to_string(),
            families: Vec::new(),
        }
    }

    fn points(&mut self) -> Option<&mut Vec<Value>> {
        self.families.last_mut().map(|f| &mut f.points)
    }

    /// The request body, with `service` as the resource's `service.name`.
    pub fn finish(self, service: &str, instance: &str) -> Value {
        let metrics: Vec<Value> = self
            .families
            .into_iter()
            .filter(|f| !f.points.is_empty())
            .map(|f| {
                let data = match f.kind {
                    Kind::Gauge => ("gauge", json!({"dataPoints": f.points})),
                    Kind::Counter => (
                        "sum",
                        json!({"dataPoints": f.points, "aggregationTemporality": CUMULATIVE, "isMonotonic": true}),
                    ),
                    Kind::Histogram => (
                        "histogram",
                        json!({"dataPoints": f.points, "aggregationTemporality": CUMULATIVE}),
                    ),
                };
                let mut metric = json!({"name": f.name, "description": f.help});
                metric[data.0] = data.1;
                if f.kind == Kind::Histogram {
                    metric["unit"] = json!("s");
                }
                metric
            })
            .collect();
        json!({"resourceMetrics": [{
            "resource": {"attributes": attributes(&[("service.name", service), ("service.instance.id", instance)])},
            "scopeMetrics": [{"scope": {"name": "tern", "version": env!("CARGO_PKG_VERSION")}, "metrics": metrics}]
        }]})
    }
}

impl MetricsPage for OtlpMetrics {
    fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        self.families.push(Family {
            name: name.to_owned(),
            kind,
            help: help.to_owned(),
            points: Vec::new(),
        });
        self
    }

    fn sample(&mut self, pairs: &[(&str, &str)], value: f64) -> &mut Self {
        let point = json!({
            "attributes": attributes(pairs),
            "startTimeUnixNano": self.start_ns,
            "timeUnixNano": self.now_ns,
            "asDouble": if value.is_finite() { value } else { 0.0 },
        });
        if let Some(points) = self.points() {
            points.push(point);
        }
        self
    }

    fn histogram_us(&mut self, pairs: &[(&str, &str)], histogram: &Histogram) -> &mut Self {
        // OTLP counts per bucket (not cumulative): bucket i holds (bound[i-1], bound[i]].
        let mut counts = Vec::with_capacity(LATENCY_BOUNDS_US.len() + 1);
        let mut below = 0u64;
        for bound in LATENCY_BOUNDS_US {
            let cumulative = histogram.count_below(bound);
            counts.push(cumulative.saturating_sub(below).to_string());
            below = cumulative;
        }
        let total = histogram.count_below(u64::MAX);
        counts.push(total.saturating_sub(below).to_string());
        let bounds: Vec<f64> = LATENCY_BOUNDS_US.iter().map(|b| *b as f64 / 1e6).collect();
        let point = json!({
            "attributes": attributes(pairs),
            "startTimeUnixNano": self.start_ns,
            "timeUnixNano": self.now_ns,
            "count": total.to_string(),
            "sum": histogram.sum as f64 / 1e6,
            "bucketCounts": counts,
            "explicitBounds": bounds,
        });
        if let Some(points) = self.points() {
            points.push(point);
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_become_gauges_sums_and_histograms() {
        let mut page = OtlpMetrics::new(1_000, 2_000);
        page.family("tern_agents", Kind::Gauge, "Agents.")
            .sample(&[("status", "Ready")], 3.0);
        page.family("tern_requests_total", Kind::Counter, "Requests.")
            .sample(&[], 42.0);
        page.family("tern_empty", Kind::Gauge, "Nothing.");
        let mut latency = Histogram::default();
        for us in [500u64, 1_500, 1_500, 3_000_000] {
            latency.record(us);
        }
        page.family("tern_latency_seconds", Kind::Histogram, "Latency.")
            .histogram_us(&[("pipeline", "p")], &latency);
        let body = page.finish("tern-control-plane", "cp-1");
        let metrics = &body["resourceMetrics"][0]["scopeMetrics"][0]["metrics"];
        assert_eq!(
            metrics.as_array().map(Vec::len),
            Some(3),
            "empty families are left out"
        );
        assert_eq!(metrics[0]["gauge"]["dataPoints"][0]["asDouble"], 3.0);
        assert_eq!(
            metrics[0]["gauge"]["dataPoints"][0]["attributes"][0]["value"]["stringValue"],
            "Ready"
        );
        assert_eq!(metrics[1]["sum"]["isMonotonic"], true);
        assert_eq!(
            metrics[1]["sum"]["dataPoints"][0]["startTimeUnixNano"],
            "1000000000"
        );
        let point = &metrics[2]["histogram"]["dataPoints"][0];
        assert_eq!(point["count"], "4");
        let counts: u64 = point["bucketCounts"]
            .as_array()
            .expect("counts")
            .iter()
            .map(|c| {
                c.as_str()
                    .and_then(|s| s.parse::<u64>().ok())
                    .expect("number")
            })
            .sum();
        assert_eq!(counts, 4, "per-bucket counts add up to the count");
        assert_eq!(
            point["bucketCounts"].as_array().map(Vec::len),
            Some(point["explicitBounds"].as_array().map_or(0, Vec::len) + 1)
        );
    }
}
