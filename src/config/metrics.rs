//! `metrics`: where `/health` and `/metrics` are served.

use std::net::SocketAddr;

use serde::Deserialize;

use crate::config::{ConfigError, invalid};

pub struct MetricsConfig {
    /// Where `/health` and `/metrics` are served; `None` puts them on `http.listen`.
    pub listen: Option<SocketAddr>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    pub listen: Option<String>,
}

pub(super) fn validate(raw: RawMetrics, listen: SocketAddr) -> Result<MetricsConfig, ConfigError> {
    let metrics = MetricsConfig {
        listen: raw
            .listen
            .map(|text| {
                text.parse().map_err(|_| {
                    invalid(
                        "metrics.listen",
                        "expected an IP address and port, e.g. 127.0.0.1:9090",
                    )
                })
            })
            .transpose()?,
    };
    if metrics.listen.is_some_and(|address| address == listen) {
        return Err(invalid(
            "metrics.listen",
            "must differ from http.listen; leave it out to serve /metrics there",
        ));
    }

    Ok(metrics)
}
