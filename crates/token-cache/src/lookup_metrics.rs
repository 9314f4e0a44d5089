//! The Prometheus series every segment lookup records (`tollgate_token_cache_requests_total` and
//! the `tollgate_token_cache_lookup_seconds` histogram, by `layer` and `result`), as handles
//! registered once per service.
//!
//! Through the `metrics` macros each record builds its key and finds it in the recorder's
//! registry (hash, shard lock, handle clone): about 590 ns for the counter and histogram of one
//! lookup with the Prometheus recorder, against 67 ns through a kept handle (throwaway probe,
//! 200,000 records). An L1 hit of 8 documents records 8 lookups; in the token-cache benchmark its
//! in-process p50 went from 16 to 14 µs.
//!
//! Registering at start also exports the four series at zero before the first lookup, so that
//! rates and hit-ratio alerts have a series from the start. A handle belongs to the recorder
//! installed when it was registered: `tollgate serve` installs the Prometheus recorder before it
//! builds any service, and a service built without one (a unit test, the benchmark's in-process
//! rows before it installed one) records nowhere, as the macros would.

use std::time::Duration;

use metrics::{Counter, Histogram};

/// The series of one `layer` and `result`.
pub(crate) struct LookupSeries {
    requests: Counter,
    seconds: Histogram,
}

impl LookupSeries {
    fn register(layer: &'static str, result: &'static str) -> Self {
        Self {
            requests: metrics::counter!("tollgate_token_cache_requests_total", "layer" => layer, "result" => result),
            seconds: metrics::histogram!("tollgate_token_cache_lookup_seconds", "layer" => layer, "result" => result),
        }
    }

    /// Counts one lookup that took `took`.
    pub(crate) fn record(&self, took: Duration) {
        self.requests.increment(1);
        self.seconds.record(took.as_secs_f64());
    }
}

/// Hits and misses per layer.
pub(crate) struct LookupMetrics {
    pub(crate) l1_hit: LookupSeries,
    pub(crate) l1_miss: LookupSeries,
    pub(crate) l2_hit: LookupSeries,
    pub(crate) l2_miss: LookupSeries,
}

impl LookupMetrics {
    /// Registers the four series with the recorder installed now.
    pub(crate) fn register() -> Self {
        Self {
            l1_hit: LookupSeries::register("l1", "hit"),
            l1_miss: LookupSeries::register("l1", "miss"),
            l2_hit: LookupSeries::register("l2", "hit"),
            l2_miss: LookupSeries::register("l2", "miss"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use metrics_exporter_prometheus::PrometheusBuilder;

    /// Each series records into the recorder it was registered with, under its own labels; all
    /// four are exported from registration on, at zero until used.
    #[test]
    fn records_into_the_series_of_its_layer_and_result() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let lookups = metrics::with_local_recorder(&recorder, LookupMetrics::register);
        lookups.l1_hit.record(Duration::from_micros(5));
        lookups.l1_hit.record(Duration::from_micros(7));
        lookups.l2_miss.record(Duration::from_micros(300));

        let rendered = handle.render();
        let mut series: Vec<&str> = rendered
            .lines()
            .filter(|line| {
                line.starts_with("tollgate_token_cache_requests_total")
                    || line.starts_with("tollgate_token_cache_lookup_seconds_count")
            })
            .collect();
        series.sort_unstable();
        assert_eq!(
            series,
            [
                r#"tollgate_token_cache_lookup_seconds_count{layer="l1",result="hit"} 2"#,
                r#"tollgate_token_cache_lookup_seconds_count{layer="l1",result="miss"} 0"#,
                r#"tollgate_token_cache_lookup_seconds_count{layer="l2",result="hit"} 0"#,
                r#"tollgate_token_cache_lookup_seconds_count{layer="l2",result="miss"} 1"#,
                r#"tollgate_token_cache_requests_total{layer="l1",result="hit"} 2"#,
                r#"tollgate_token_cache_requests_total{layer="l1",result="miss"} 0"#,
                r#"tollgate_token_cache_requests_total{layer="l2",result="hit"} 0"#,
                r#"tollgate_token_cache_requests_total{layer="l2",result="miss"} 1"#,
            ]
        );
    }
}
