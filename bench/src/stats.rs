//! Percentiles, medians and the summary of one measured run.
//!
//! Percentiles use the nearest-rank definition: the p-th percentile of n sorted samples is
//! the sample at 1-based rank ceil(p / 100 × n), so it is always an observed value and p100
//! is the maximum.

use std::time::Duration;

/// Returns the nearest-rank percentile `p` (0 < p ≤ 100) of `values`, or `None` if empty.
pub(crate) fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() || !(p > 0.0 && p <= 100.0) {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);

    // The rank is at least 1 and at most n because 0 < p <= 100.
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// Returns the median of `values`: the middle value, or the mean of the two middle values
/// when the count is even. `None` if empty.
pub(crate) fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);

    let middle = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted.get(middle).copied()
    } else {
        Some((sorted[middle - 1] + sorted[middle]) / 2.0)
    }
}

/// The outcome of one streamed request as the client saw it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample {
    /// Time from sending the request to receiving the first non-empty content delta.
    pub(crate) time_to_first_token: Option<Duration>,
    /// Number of non-empty content deltas received.
    pub(crate) content_chunks: usize,
    /// Failure reason, or `None` for a complete response.
    pub(crate) error: Option<String>,
}

/// Summary of one fixed-count run of one path at one concurrency.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RunSummary {
    /// Requests sent.
    pub(crate) requests: usize,
    /// Requests that failed; their samples are left out of the percentiles.
    pub(crate) errors: usize,
    /// Time to first token of successful requests, in milliseconds, p50.
    pub(crate) ttft_p50_ms: Option<f64>,
    /// Time to first token of successful requests, in milliseconds, p99.
    pub(crate) ttft_p99_ms: Option<f64>,
    /// Content deltas received by all clients per second of wall-clock time.
    pub(crate) chunks_per_second: f64,
    /// First error message seen, to show why requests failed.
    pub(crate) first_error: Option<String>,
}

impl RunSummary {
    /// Summarizes the samples of a run that took `wall` from first send to last byte.
    pub(crate) fn from_samples(samples: &[Sample], wall: Duration) -> Self {
        let ok_ttfts_ms: Vec<f64> = samples
            .iter()
            .filter(|sample| sample.error.is_none())
            .filter_map(|sample| sample.time_to_first_token)
            .map(|ttft| ttft.as_secs_f64() * 1000.0)
            .collect();
        let total_chunks: usize = samples.iter().map(|sample| sample.content_chunks).sum();
        let chunks_per_second = if wall.is_zero() {
            0.0
        } else {
            total_chunks as f64 / wall.as_secs_f64()
        };
        Self {
            requests: samples.len(),
            errors: samples
                .iter()
                .filter(|sample| sample.error.is_some())
                .count(),
            ttft_p50_ms: percentile(&ok_ttfts_ms, 50.0),
            ttft_p99_ms: percentile(&ok_ttfts_ms, 99.0),
            chunks_per_second,
            first_error: samples.iter().find_map(|sample| sample.error.clone()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn percentile_uses_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), Some(50.0));
        assert_eq!(percentile(&values, 99.0), Some(99.0));
        assert_eq!(percentile(&values, 100.0), Some(100.0));
        assert_eq!(percentile(&values, 0.5), Some(1.0));
    }

    #[test]
    fn percentile_ignores_input_order() {
        let values = [9.0, 1.0, 5.0, 3.0, 7.0];
        // rank ceil(0.5 * 5) = 3 of [1, 3, 5, 7, 9]
        assert_eq!(percentile(&values, 50.0), Some(5.0));
        // rank ceil(0.99 * 5) = 5
        assert_eq!(percentile(&values, 99.0), Some(9.0));
    }

    #[test]
    fn percentile_of_small_sets() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[4.0], 99.0), Some(4.0));
        // rank ceil(0.99 * 10) = 10, so p99 of ten samples is the maximum
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&ten, 99.0), Some(10.0));
        // rank ceil(0.5 * 10) = 5
        assert_eq!(percentile(&ten, 50.0), Some(5.0));
    }

    #[test]
    fn percentile_rejects_out_of_range_p() {
        assert_eq!(percentile(&[1.0, 2.0], 0.0), None);
        assert_eq!(percentile(&[1.0, 2.0], 101.0), None);
        assert_eq!(percentile(&[1.0, 2.0], f64::NAN), None);
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    fn ok_sample(ttft_ms: u64, chunks: usize) -> Sample {
        Sample {
            time_to_first_token: Some(Duration::from_millis(ttft_ms)),
            content_chunks: chunks,
            error: None,
        }
    }

    #[test]
    fn summary_leaves_failed_requests_out_of_percentiles() {
        let mut samples: Vec<Sample> = (1..=4).map(|ms| ok_sample(ms, 10)).collect();
        samples.push(Sample {
            time_to_first_token: Some(Duration::from_millis(900)),
            content_chunks: 3,
            error: Some("stream ended without [DONE]".to_owned()),
        });
        let summary = RunSummary::from_samples(&samples, Duration::from_secs(2));

        assert_eq!(summary.requests, 5);
        assert_eq!(summary.errors, 1);
        assert_eq!(summary.ttft_p50_ms, Some(2.0));
        assert_eq!(summary.ttft_p99_ms, Some(4.0));
        // 43 chunks in 2 s, counting the partial stream because the client received them
        assert_eq!(summary.chunks_per_second, 21.5);
        assert_eq!(
            summary.first_error.as_deref(),
            Some("stream ended without [DONE]")
        );
    }

    #[test]
    fn summary_of_zero_wall_time_has_zero_rate() {
        let summary = RunSummary::from_samples(&[ok_sample(1, 5)], Duration::ZERO);
        assert_eq!(summary.chunks_per_second, 0.0);
    }
}
