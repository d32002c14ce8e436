//! The log filter (`VMDESK_LOG`): vmdesk's own crates at the level asked for;
//! other crates never below `debug` unless the filter names them, because at
//! `trace` tungstenite, hyper and friends log payloads (keystrokes, pasted
//! text, tokens).

use tracing_subscriber::filter::LevelFilter;

/// The level of the log when `VMDESK_LOG` is not set.
pub const DEFAULT: &str = "warn";

/// vmdesk's own crates (tracing targets), which may log at `trace`.
const OWN: &[&str] = &[
    "vmdesk",
    "vmdesk_core",
    "vmdesk_libvirt",
    "vmdesk_azure",
    "vmdesk_console",
];

/// The filter directives for `spec` (a `tracing` filter such as `trace` or
/// `info,vmdesk_core=debug`): a bare `trace` becomes `debug` for every crate
/// and `trace` for vmdesk's crates that the spec does not name.
pub fn directives(spec: &str) -> String {
    let parts: Vec<&str> = spec
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    let is_trace = |p: &str| {
        !p.contains(['=', '[', ':']) && p.parse::<LevelFilter>().ok() == Some(LevelFilter::TRACE)
    };
    if !parts.iter().any(|p| is_trace(p)) {
        return parts.join(",");
    }
    let named = |krate: &str| {
        parts.iter().any(|p| {
            let target = p.split(['=', '[']).next().unwrap_or("");
            target == krate || target.starts_with(&format!("{krate}::"))
        })
    };
    let mut out: Vec<String> = parts
        .iter()
        .map(|p| {
            if is_trace(p) {
                "debug".to_owned()
            } else {
                (*p).to_owned()
            }
        })
        .collect();
    out.extend(
        OWN.iter()
            .filter(|k| !named(k))
            .map(|k| format!("{k}=trace")),
    );
    out.join(",")
}

/// The filter of `VMDESK_LOG` (the default when unset or unparsable).
pub fn filter(spec: Option<&str>) -> tracing_subscriber::EnvFilter {
    let spec = spec.unwrap_or(DEFAULT);
    tracing_subscriber::EnvFilter::try_new(directives(spec))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT))
}

/// Sends the log to stderr through the filter of `VMDESK_LOG`.
pub fn init() {
    let spec = std::env::var("VMDESK_LOG").ok();
    tracing_subscriber::fmt()
        .with_env_filter(filter(spec.as_deref()))
        .with_writer(std::io::stderr)
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;
    use tracing_subscriber::layer::SubscriberExt;

    /// Whether an event of `target` at `level` passes the filter of `spec`.
    fn passes(spec: &str, target: &'static str, level: Level) -> bool {
        let subscriber = tracing_subscriber::registry().with(filter(Some(spec)));
        tracing::subscriber::with_default(subscriber, || match level {
            Level::TRACE => match target {
                "tungstenite::protocol" => {
                    tracing::enabled!(target: "tungstenite::protocol", Level::TRACE)
                }
                "vmdesk_console::bridge" => {
                    tracing::enabled!(target: "vmdesk_console::bridge", Level::TRACE)
                }
                "hyper::proto" => tracing::enabled!(target: "hyper::proto", Level::TRACE),
                _ => unreachable!("a target of these tests"),
            },
            Level::DEBUG => match target {
                "tungstenite::protocol" => {
                    tracing::enabled!(target: "tungstenite::protocol", Level::DEBUG)
                }
                _ => unreachable!("a target of these tests"),
            },
            _ => unreachable!("a level of these tests"),
        })
    }

    #[test]
    fn trace_does_not_reach_tungstenite_frames() {
        assert!(!passes("trace", "tungstenite::protocol", Level::TRACE));
    }

    #[test]
    fn trace_caps_other_crates_at_debug() {
        assert!(passes("trace", "tungstenite::protocol", Level::DEBUG));
        assert!(!passes("trace", "hyper::proto", Level::TRACE));
    }

    #[test]
    fn trace_reaches_vmdesk_crates() {
        assert!(passes("trace", "vmdesk_console::bridge", Level::TRACE));
    }

    #[test]
    fn a_crate_named_in_the_filter_gets_trace() {
        assert!(passes(
            "trace,tungstenite=trace",
            "tungstenite::protocol",
            Level::TRACE
        ));
    }

    #[test]
    fn a_vmdesk_crate_named_lower_keeps_its_level() {
        assert_eq!(
            directives("trace,vmdesk_console=info"),
            "debug,vmdesk_console=info,vmdesk=trace,vmdesk_core=trace,vmdesk_libvirt=trace,vmdesk_azure=trace"
        );
    }

    #[test]
    fn filters_without_trace_are_unchanged() {
        assert_eq!(
            directives("info,vmdesk_core=debug"),
            "info,vmdesk_core=debug"
        );
    }

    #[test]
    fn an_unparsable_filter_falls_back_to_the_default() {
        assert!(!passes("[[[", "tungstenite::protocol", Level::DEBUG));
    }
}
