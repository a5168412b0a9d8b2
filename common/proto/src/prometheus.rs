//! The Prometheus text exposition format (version 0.0.4), written by hand: a family's help and
//! type once, then its samples, label values escaped.

use std::fmt::Write;

use crate::telemetry::Histogram;

/// The content type of the format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds of histogram buckets, in microseconds: powers of two from 64 µs to about 17 s,
/// which are bucket boundaries of [`Histogram`] too, so each cumulative count is exactly the
/// values at or below its bound (`le` is inclusive, as Prometheus defines it).
pub const LATENCY_BOUNDS_US: [u64; 19] = {
    let mut bounds = [0u64; 19];
    let mut i = 0;
    while i < 19 {
        bounds[i] = 64 << i;
        i += 1;
    }
    bounds
};

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Where metrics are written, family by family: the Prometheus text page ([`Exposition`]) or
/// an OpenTelemetry request ([`crate::otlp::OtlpMetrics`]), so both carry the same numbers.
pub trait MetricsPage {
    /// Starts the family `name`; its samples follow.
    fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self;
    /// One sample of the current counter or gauge family.
    fn sample(&mut self, pairs: &[(&str, &str)], value: f64) -> &mut Self;
    /// One histogram of the current histogram family, from microseconds, in seconds.
    fn histogram_us(&mut self, pairs: &[(&str, &str)], histogram: &Histogram) -> &mut Self;
}

impl MetricsPage for Exposition {
    fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        Exposition::family(self, name, kind, help)
    }
    fn sample(&mut self, pairs: &[(&str, &str)], value: f64) -> &mut Self {
        Exposition::sample(self, pairs, value)
    }
    fn histogram_us(&mut self, pairs: &[(&str, &str)], histogram: &Histogram) -> &mut Self {
        Exposition::histogram_us(self, pairs, histogram)
    }
}

/// A page of metrics being written.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
    family: String,
}

fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn labels(pairs: &[(&str, &str)], extra: Option<(&str, &str)>) -> String {
    let all: Vec<String> = pairs
        .iter()
        .copied()
        .chain(extra)
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if all.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", all.join(","))
    }
}

fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{value}")
    }
}

impl Exposition {
    /// Starts the family `name`; its samples follow.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        self.family = name.to_owned();
        self
    }

    /// One sample of the current counter or gauge family.
    pub fn sample(&mut self, pairs: &[(&str, &str)], value: f64) -> &mut Self {
        let _ = writeln!(
            self.out,
            "{}{} {}",
            self.family,
            labels(pairs, None),
            number(value)
        );
        self
    }

    /// One histogram of the current histogram family, from microseconds, in seconds.
    pub fn histogram_us(&mut self, pairs: &[(&str, &str)], histogram: &Histogram) -> &mut Self {
        let name = self.family.clone();
        for bound in LATENCY_BOUNDS_US {
            let le = format!("{}", bound as f64 / 1e6);
            let _ = writeln!(
                self.out,
                "{name}_bucket{} {}",
                labels(pairs, Some(("le", &le))),
                histogram.count_below(bound)
            );
        }
        let count = histogram.count_below(u64::MAX);
        let _ = writeln!(
            self.out,
            "{name}_bucket{} {count}",
            labels(pairs, Some(("le", "+Inf")))
        );
        let _ = writeln!(
            self.out,
            "{name}_sum{} {}",
            labels(pairs, None),
            number(histogram.sum as f64 / 1e6)
        );
        let _ = writeln!(self.out, "{name}_count{} {count}", labels(pairs, None));
        self
    }

    pub fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_samples_and_histograms_follow_the_format() {
        let mut h = Histogram::default();
        for us in [100u64, 100, 5_000, 3_000_000] {
            h.record(us);
        }
        let mut page = Exposition::default();
        page.family("tern_requests_total", Kind::Counter, "Requests.")
            .sample(&[("pipeline", "a\"b\\c\nd")], 3.0);
        page.family("tern_latency_seconds", Kind::Histogram, "Latency.")
            .histogram_us(&[("pipeline", "p")], &h);
        let text = page.finish();
        assert!(text.contains("# TYPE tern_requests_total counter\n"));
        assert!(text.contains("tern_requests_total{pipeline=\"a\\\"b\\\\c\\nd\"} 3\n"));
        assert!(text.contains("tern_latency_seconds_bucket{pipeline=\"p\",le=\"0.000128\"} 2\n"));
        assert!(text.contains("tern_latency_seconds_bucket{pipeline=\"p\",le=\"0.008192\"} 3\n"));
        assert!(text.contains("tern_latency_seconds_bucket{pipeline=\"p\",le=\"+Inf\"} 4\n"));
        assert!(text.contains("tern_latency_seconds_count{pipeline=\"p\"} 4\n"));
        assert!(text.contains("tern_latency_seconds_sum{pipeline=\"p\"} 3.0052\n"));
        // Cumulative buckets never decrease.
        let counts: Vec<u64> = text
            .lines()
            .filter(|l| l.starts_with("tern_latency_seconds_bucket"))
            .map(|l| {
                l.rsplit(' ')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("count")
            })
            .collect();
        assert!(counts.windows(2).all(|w| w[0] <= w[1]));
    }
}
